//! Single movements: a request checked once into a `TransferCommand`, queued, settled; reading
//! transfers back.

use super::*;

// ---------------------------------------------------------------- movements

/// A transfer request, already parsed from the wire.
pub struct TransferInput {
    pub kind: TransferKind,
    pub currency: String,
    pub amount: i64,
    /// For `Transfer`: the debit account. Deposits and withdrawals name the customer account.
    pub debit_account_id: String,
    pub credits: Vec<(String, i64)>,
    pub reference: Option<String>,
    /// Description, metadata, counterparty: sealed at rest.
    pub details: TransferDetails,
    /// For reversals: the original and the legs given back.
    pub reverses: Option<ReversalLegs>,
    /// For captures: the hold being captured.
    pub capture_hold: Option<crate::ids::HoldId>,
}

/// What a reversal gives back: per account, the amount it debits, and what each leg of the
/// original received (the ceiling across all reversals).
pub struct ReversalLegs {
    pub link: crate::store::Reverses,
    pub debits: Vec<(AccountId, Amount)>,
}

/// A movement ready for the writer, or the stored answer of an earlier identical request.
pub(super) enum Prepared<'a> {
    Replay(MovementOutcome),
    /// The movement and its idempotency key's in-flight claim, held until the movement is
    /// settled.
    Ready(Box<TransferCommand>, Option<InFlightGuard<'a>>),
}

pub async fn move_money(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<IdempotencyKey>,
) -> Result<MovementOutcome, MoveError> {
    refuse_if_over_budget(core, actor)?;
    let outcome = move_one(core, meta, actor, input, idempotency).await;
    if outcome.is_err() {
        count_refusals(core, meta, actor, 1).await;
    }
    outcome
}

pub(super) async fn move_one(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<IdempotencyKey>,
) -> Result<MovementOutcome, MoveError> {
    match prepare(core, meta, actor, input, idempotency.as_ref(), false).await? {
        Prepared::Replay(o) => {
            crate::observability::transfer("replayed");
            Ok(o)
        }
        Prepared::Ready(m, _guard) => {
            let r = core.ledger.post(*m).await?;
            settle(
                core,
                actor.tenant()?,
                &actor.idempotency_scope(),
                idempotency.as_ref(),
                r,
            )
            .await
        }
    }
}

/// Validates a movement and builds it for the writer, claiming its idempotency key in this
/// process; posts nothing.
///
/// A retry is not looked up here: the writer reads the key under lock in the posting
/// transaction anyway and answers a duplicate with the stored response, which saves a read on
/// every new request. Only when the request would fail before reaching the writer is the key
/// looked up first, so a retry still gets the first answer whatever has changed since.
pub(super) async fn prepare<'a>(
    core: &'a Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<&IdempotencyKey>,
    batch: bool,
) -> Result<Prepared<'a>, MoveError> {
    let tenant = actor.tenant()?.clone();
    let principal_key = actor.idempotency_scope();
    let guard = match idempotency {
        None => None,
        Some(k) => Some(core.inflight.claim_key(&tenant, &principal_key, k)?),
    };
    match build_movement(core, meta, actor, input, idempotency, batch).await {
        Ok(Prepared::Ready(m, _)) => Ok(Prepared::Ready(m, guard)),
        Ok(replayed) => Ok(replayed),
        Err(e) => {
            if let Some(k) = idempotency
                && let Some(stored) = replay(core, &tenant, &principal_key, k).await?
            {
                return Ok(Prepared::Replay(stored));
            }
            Err(e)
        }
    }
}

/// The movement for the writer, or why it cannot be posted.
pub(super) async fn build_movement(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<&IdempotencyKey>,
    batch: bool,
) -> Result<Prepared<'static>, MoveError> {
    let started = std::time::Instant::now();
    let built = build(core, meta, actor, input, idempotency, batch).await;
    crate::observability::phases::record(
        crate::observability::phases::Phase::Prepare,
        started.elapsed(),
    );
    built
}

async fn build(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<&IdempotencyKey>,
    batch: bool,
) -> Result<Prepared<'static>, MoveError> {
    let tenant = actor.tenant()?.clone();
    let principal_key = actor.user_id.to_string();
    let key_scope = actor.idempotency_scope();
    // Every value is parsed and every shape rule applied once (`CheckedTransfer`); a
    // reversal's legs come typed from the original's records.
    let kind = input.kind;
    let (currency, amount, debits, credits, debit_owner, reference, details) = match kind {
        TransferKind::Reversal => {
            let currency =
                Currency::parse(&input.currency).map_err(|m| AppError::invalid("currency", m))?;
            let amount = Amount::parse(input.amount).map_err(|m| AppError::invalid("amount", m))?;
            let debits = input
                .reverses
                .as_ref()
                .map(|r| r.debits.clone())
                .unwrap_or_default();
            let credits = vec![(AccountId::from_trusted(input.debit_account_id), amount)];
            (currency, amount, debits, credits, None, None, input.details)
        }
        _ => {
            let t = CheckedTransfer::try_from(TransferRequest {
                kind,
                currency: input.currency,
                amount: input.amount,
                debit_account_id: input.debit_account_id,
                credits: input.credits,
                reference: input.reference,
                details: input.details,
            })
            .map_err(invalid_transfer)?;
            let (debits, credits, owner) = match kind {
                TransferKind::Transfer => {
                    let owner = owner_filter(core, actor, Permission::TransfersCreate)
                        .await?
                        .map(CustomerId::from_trusted);
                    (vec![(t.debit, t.amount)], t.credits, owner)
                }
                TransferKind::Deposit | TransferKind::Withdrawal => {
                    let settlement = core
                        .store
                        .system_account(
                            &tenant,
                            AccountKind::Settlement.as_str(),
                            t.currency.code(),
                        )
                        .await?
                        .ok_or_else(|| {
                            AppError::invalid(
                                "currency",
                                format!("this tenant does not hold {}", t.currency),
                            )
                        })?;
                    let settlement = AccountId::from_trusted(settlement.id);
                    if kind == TransferKind::Deposit {
                        (
                            vec![(settlement, t.amount)],
                            vec![(t.debit, t.amount)],
                            None,
                        )
                    } else {
                        (
                            vec![(t.debit, t.amount)],
                            vec![(settlement, t.amount)],
                            None,
                        )
                    }
                }
                // A capture debits the held account and credits what the hold was for.
                _ => (vec![(t.debit, t.amount)], t.credits, None),
            };
            (
                t.currency,
                t.amount,
                debits,
                credits,
                owner,
                t.reference,
                t.details,
            )
        }
    };
    // Money leaving an account above the tenant's threshold needs a recent authentication.
    if kind.sends_money_out()
        && actor
            .policy
            .transfer_needs_step_up(currency.code(), amount.get())
    {
        crate::service::security::require_step_up(core, meta, actor).await?;
    }

    // Restriction of processing (GDPR Art. 18: no new movement may touch a restricted
    // customer's account; a reversal is a correction and stays allowed), KYC tier limits and
    // the pre-commit checks are applied by the ledger core inside the posting transaction, on
    // the accounts and running totals it loads under lock: exact, whatever the instances. The
    // movement carries its currency's limits from this process's cache.
    let kyc = crate::service::kyc::movement_limits(core, &tenant, kind, currency).await?;
    let id = TransferId::generate();
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, Some(actor)).own(
        &format!("{}.create", kind.as_str()),
        Some(("transfer", id.as_str())),
        Outcome::Success,
        None,
    );
    // Details are sealed here, before the writer: it never sees a key it has to fetch, and
    // nothing reaches storage in the clear. (The idempotency key stores the outcome's facts,
    // which carry no personal data.)
    let seal_key = if details.is_empty() {
        None
    } else {
        Some(reply_key(core, &tenant, 1).await?)
    };
    let sealed_details = match (&seal_key, details.is_empty()) {
        (Some(key), false) => {
            let col = crate::store::keys::TRANSFER_DETAILS;
            let json =
                zeroize::Zeroizing::new(serde_json::to_vec(&details).map_err(AppError::internal)?);
            let sealed = key
                .seal(&col.at(tenant.as_str(), id.as_str()), &json)
                .map_err(AppError::internal)?;
            Some(sealed)
        }
        _ => None,
    };
    let movement = TransferCommand {
        id,
        tenant_id: tenant.clone(),
        kind,
        currency,
        amount,
        debits,
        debit_owner,
        credits,
        reference,
        details: sealed_details,
        details_clear: (!details.is_empty()).then(|| Box::new(details)),
        created_by: principal_key.clone(),
        created_at: now,
        audit,
        idempotency: idempotency.map(|k| NewIdempotency {
            principal_id: key_scope.clone(),
            key: k.key.clone(),
            request_hash: k.request_hash.clone(),
            expires_at: now.plus_seconds(core.settings.idempotency_ttl_seconds),
        }),
        reverses: input.reverses.map(|r| r.link),
        capture_hold: input.capture_hold,
        quiet_refusal: batch,
        actor: Some(actor.actor_check()),
        kyc,
        subject: None,
    };
    Ok(Prepared::Ready(Box::new(movement), None))
}

/// Turns the writer's result into the request's outcome.
pub(super) async fn settle(
    core: &Core,
    tenant: &TenantId,
    principal: &str,
    idempotency: Option<&IdempotencyKey>,
    result: PostResult,
) -> Result<MovementOutcome, MoveError> {
    crate::observability::transfer(match &result {
        PostResult::Posted(_) => "posted",
        PostResult::Refused(_) => "refused",
        PostResult::Reviewed(_) => "reviewed",
        PostResult::DuplicateKey(_) => "replayed",
        PostResult::HoldPlaced(_) | PostResult::HoldVoided(_) => "hold",
    });
    match result {
        PostResult::Posted(p) => Ok(MovementOutcome::Posted(Box::new(p))),
        PostResult::Refused(r) => Err(MoveError {
            error: refusal_error(r),
            audited: true,
        }),
        PostResult::HoldPlaced(_) | PostResult::HoldVoided(_) => {
            Err(AppError::internal("a movement's result names a hold").into())
        }
        PostResult::Reviewed(h) => Ok(MovementOutcome::Reviewed {
            hold: Box::new(placed_hold_record(h)),
            replayed: false,
        }),
        PostResult::DuplicateKey(stored) => match idempotency {
            Some(k) => Ok(stored_answer(core, tenant, principal, stored, k)
                .await?
                .into_movement()?),
            None => Err(AppError::internal("duplicate key without a key").into()),
        },
    }
}

/// The record of a hold the writer inserted (a payment hold, or a movement held for review).
pub(super) fn placed_hold_record(h: crate::domain::ledger::PlacedHold) -> crate::store::HoldRecord {
    crate::store::HoldRecord {
        id: h.id,
        tenant_id: h.tenant_id,
        account_id: h.account_id,
        credit_account_id: h.credit_account_id,
        currency: h.currency,
        amount: h.amount,
        status: "active".into(),
        expires_at: h.expires_at,
        reference: h.reference,
        captured_transfer_id: None,
        created_by: Some(h.created_by),
        created_at: h.created_at,
        updated_at: h.created_at,
        purpose: h.purpose.into(),
    }
}

/// A transfer and the accounts whose resulting balances the caller may see (`None`: all).
/// Under the `Own` scope a transfer is visible only if one of the caller's accounts is a leg.
pub async fn get_transfer(
    core: &Core,
    actor: &Principal,
    id: &str,
) -> AppResult<(PostedTransfer, Option<HashSet<String>>)> {
    let owner = owner_filter(core, actor, Permission::TransfersRead).await?;
    let tenant = actor.tenant()?;
    let t = match TransferId::parse(id) {
        Some(_) => core.store.get_transfer(tenant, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("transfer"))?;
    let mut t = t;
    open_details(core, &mut t).await?;
    let Some(owner) = owner else {
        return Ok((t, None));
    };
    let mut mine = HashSet::new();
    for e in &t.entries {
        if let Some(a) = core.store.get_account(tenant, &e.account_id).await?
            && a.customer_id.as_deref() == Some(owner.as_str())
        {
            mine.insert(a.id);
        }
    }
    if mine.is_empty() {
        return Err(AppError::NotFound("transfer"));
    }
    // A customer sees no staff ids (tipping off): only its own, when it made the transfer.
    t.transfer.created_by = crate::domain::disclosure::customer_actor(
        t.transfer.created_by.take(),
        Some(actor.user_id.as_str()),
    );
    Ok((t, Some(mine)))
}

pub async fn list_transfers(
    core: &Core,
    actor: &Principal,
    mut filter: TransferFilter,
    page: &Page,
) -> AppResult<Listed<PostedTransfer>> {
    filter.customer_id = owner_filter(core, actor, Permission::TransfersRead).await?;
    let own_scope = filter.customer_id.is_some();
    let tenant = actor.tenant()?;
    let mut rows = Vec::new();
    for t in core.store.list_transfers(tenant, &filter, page).await? {
        // The legs (at most 101 entries each) so a list shows who was credited.
        let entries = core
            .store
            .get_transfer(tenant, &t.id)
            .await?
            .map(|p| p.entries)
            .unwrap_or_default();
        let mut p = PostedTransfer {
            transfer: t,
            entries,
            details: None,
        };
        open_details(core, &mut p).await?;
        if own_scope {
            // A customer sees no staff ids (tipping off).
            p.transfer.created_by = crate::domain::disclosure::customer_actor(
                p.transfer.created_by.take(),
                Some(actor.user_id.as_str()),
            );
        }
        rows.push(p);
    }
    Ok(Listed::from_rows(rows, page))
}
