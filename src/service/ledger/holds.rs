//! Holds: reserving, reading, voiding and capturing.

use super::*;

use crate::domain::ledger::{HOLD_MAX_SECONDS, HOLD_MIN_SECONDS};

/// A hold request, parsed from the wire.
pub struct HoldInput {
    pub account_id: String,
    /// The account a capture will credit by default; it shows the amount as pending credits.
    pub credit_account_id: Option<String>,
    pub currency: String,
    pub amount: i64,
    pub expires_in_seconds: i64,
    pub reference: Option<String>,
}

/// What creating a hold answered: the hold, or (a retry) the hold as its creation answered it.
pub enum HoldOutcome {
    Created(Box<crate::store::HoldRecord>),
    Replayed(Box<crate::store::HoldRecord>),
    /// A retry answered from a body rendered and stored by a version before stored outcomes.
    ReplayedBody {
        status: u16,
        body: String,
    },
}

impl StoredAnswer {
    /// The answer to a retried hold.
    pub(super) fn into_hold(self) -> AppResult<HoldOutcome> {
        match self {
            StoredAnswer::Hold(h) => Ok(HoldOutcome::Replayed(h)),
            StoredAnswer::Body { status, body } => Ok(HoldOutcome::ReplayedBody { status, body }),
            StoredAnswer::Refused(r) => Err(refusal_error(r)),
            StoredAnswer::Transfer(_) => Err(AppError::internal(
                "a hold's idempotency key names a transfer",
            )),
        }
    }
}

/// Reserves part of an account's available balance until its expiry. With an idempotency key,
/// a retry answers what the first request answered and reserves nothing more.
pub async fn create_hold(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: HoldInput,
    idempotency: Option<IdempotencyKey>,
) -> AppResult<HoldOutcome> {
    let tenant = actor.tenant()?;
    refuse_if_over_budget(core, actor)?;
    let principal_key = actor.user_id.to_string();
    let key_scope = actor.idempotency_scope();
    let _guard = match &idempotency {
        None => None,
        Some(k) => {
            if let Some(a) = stored(core, tenant, &key_scope, k).await? {
                return a.into_hold();
            }
            Some(core.inflight.claim_key(tenant, &key_scope, k)?)
        }
    };
    let currency =
        Currency::parse(&input.currency).map_err(|m| AppError::invalid("currency", m))?;
    let amount = Amount::parse(input.amount).map_err(|m| AppError::invalid("amount", m))?;
    // A hold is a money movement in waiting: the same step-up threshold as a transfer.
    if actor
        .policy
        .transfer_needs_step_up(currency.code(), amount.get())
    {
        crate::service::security::require_step_up(core, meta, actor).await?;
    }
    if !(HOLD_MIN_SECONDS..=HOLD_MAX_SECONDS).contains(&input.expires_in_seconds) {
        return Err(AppError::invalid(
            "expires_in_seconds",
            format!("must be between {HOLD_MIN_SECONDS} and {HOLD_MAX_SECONDS}"),
        ));
    }
    for (param, id) in [
        ("account_id", Some(&input.account_id)),
        ("credit_account_id", input.credit_account_id.as_ref()),
    ] {
        if let Some(id) = id
            && AccountId::parse(id).is_none()
        {
            return Err(AppError::Invalid {
                code: "account_not_found",
                param: Some(param.into()),
                message: "no such account".into(),
            });
        }
    }
    if input.credit_account_id.as_ref() == Some(&input.account_id) {
        return Err(AppError::invalid(
            "credit_account_id",
            "a hold cannot be destined for the held account",
        ));
    }
    // Restriction of processing, like every other account rule, is the ledger core's to check
    // on the rows it locks.
    let now = core.clock.now();
    let id = crate::ids::HoldId::generate();
    let audit = AuditBuilder::new(core, meta, Some(actor)).own(
        "hold.create",
        Some(("hold", id.as_str())),
        Outcome::Success,
        None,
    );
    let command = crate::domain::ledger::HoldCommand {
        id,
        tenant_id: tenant.clone(),
        // Well-formed (checked above); whether it exists is the core's to say, under lock.
        account_id: AccountId::from_trusted(input.account_id),
        owner: None,
        credit_account_id: input.credit_account_id.map(AccountId::from_trusted),
        currency,
        amount,
        expires_at: now.plus_seconds(input.expires_in_seconds),
        reference: input.reference,
        created_by: principal_key.clone(),
        created_at: now,
        audit,
        idempotency: idempotency.as_ref().map(|k| NewIdempotency {
            principal_id: key_scope.clone(),
            key: k.key.clone(),
            request_hash: k.request_hash.clone(),
            expires_at: now.plus_seconds(core.settings.idempotency_ttl_seconds),
        }),
        actor: Some(actor.actor_check()),
    };
    match core.ledger.post(LedgerCommand::PlaceHold(command)).await? {
        PostResult::HoldPlaced(h) => Ok(HoldOutcome::Created(Box::new(
            super::movements::placed_hold_record(h),
        ))),
        PostResult::Refused(refusal) => {
            count_refusals(core, meta, actor, 1).await;
            Err(refusal_error(refusal))
        }
        // Another request with this key committed first: answer what it answered.
        PostResult::DuplicateKey(stored) => match idempotency.as_ref() {
            Some(k) => stored_answer(core, tenant, &key_scope, stored, k)
                .await?
                .into_hold(),
            None => Err(AppError::internal("duplicate key without a key")),
        },
        _ => Err(AppError::internal("a hold's result names a movement")),
    }
}

/// An active hold past its expiry reads as expired.
pub(super) fn effective_hold(
    mut h: crate::store::HoldRecord,
    now: crate::clock::Timestamp,
) -> crate::store::HoldRecord {
    if h.status == "active" && h.expires_at <= now.as_micros() {
        h.status = "expired".into();
    }
    h
}

pub async fn get_hold(
    core: &Core,
    actor: &Principal,
    id: &str,
) -> AppResult<crate::store::HoldRecord> {
    let hold = match crate::ids::HoldId::parse(id) {
        Some(_) => core.store.get_hold(actor.tenant()?, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("hold"))?;
    // Visible only to those who may see its account.
    visible_account(core, actor, &hold.account_id, Permission::AccountsRead)
        .await
        .map_err(|_| AppError::NotFound("hold"))?;
    Ok(effective_hold(hold, core.clock.now()))
}

pub async fn void_hold(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<crate::store::HoldRecord> {
    let hold = get_hold(core, actor, id).await?;
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, Some(actor)).own(
        "hold.void",
        Some(("hold", &hold.id)),
        Outcome::Success,
        None,
    );
    let command = crate::domain::ledger::VoidHoldCommand {
        tenant_id: actor.tenant()?.clone(),
        hold: crate::ids::HoldId::from_trusted(hold.id.clone()),
        created_at: now,
        audit,
        actor: Some(actor.actor_check()),
    };
    match core.ledger.post(LedgerCommand::VoidHold(command)).await? {
        PostResult::HoldVoided(_) => Ok(crate::store::HoldRecord {
            status: "voided".into(),
            updated_at: now.as_micros(),
            ..hold
        }),
        PostResult::Refused(refusal) => Err(refusal_error(refusal)),
        _ => Err(AppError::internal("a void's result names something else")),
    }
}

/// Captures all or part of a hold into a transfer to `credit_account_id`; the rest is released.
#[allow(clippy::too_many_arguments)]
pub async fn capture_hold(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    credit_account_id: Option<String>,
    amount: Option<i64>,
    idempotency: Option<IdempotencyKey>,
) -> Result<MovementOutcome, MoveError> {
    let hold = get_hold(core, actor, id).await?;
    let amount = amount.unwrap_or(hold.amount);
    // A hold that names its destination is captured there and nowhere else: the destination
    // was part of what was authorised when the hold was placed.
    if let (Some(named), Some(asked)) = (&hold.credit_account_id, &credit_account_id)
        && named != asked
    {
        return Err(AppError::invalid(
            "credit_account_id",
            "the hold names the account it is captured to; a capture cannot redirect it",
        )
        .into());
    }
    let Some(credit_account_id) = credit_account_id.or_else(|| hold.credit_account_id.clone())
    else {
        return Err(AppError::invalid(
            "credit_account_id",
            "required: the hold names no account to credit",
        )
        .into());
    };
    if credit_account_id == hold.account_id {
        return Err(AppError::invalid(
            "credit_account_id",
            "a capture cannot credit the held account",
        )
        .into());
    }
    let input = TransferInput {
        kind: TransferKind::Capture,
        currency: hold.currency.clone(),
        amount,
        debit_account_id: hold.account_id.clone(),
        credits: vec![(credit_account_id, amount)],
        reference: None,
        details: TransferDetails::described(format!("capture of {}", hold.id)),
        reverses: None,
        capture_hold: Some(crate::ids::HoldId::from_trusted(hold.id.clone())),
    };
    move_money(core, meta, actor, input, idempotency).await
}
