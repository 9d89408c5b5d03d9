//! Accounts: opening, reading (with expired holds released), status and overdraft changes, and
//! the system accounts of a tenant's currencies.

use super::*;

// ---------------------------------------------------------------- accounts

pub async fn open_account(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    customer_id: &str,
    currency: &str,
) -> AppResult<AccountRecord> {
    let tenant_id = actor.tenant()?;
    let currency = Currency::parse(currency).map_err(|m| AppError::invalid("currency", m))?;
    let tenant = core
        .store
        .get_tenant(tenant_id)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    if !tenant.currencies.split(',').any(|c| c == currency.code()) {
        return Err(AppError::invalid(
            "currency",
            format!(
                "this tenant does not hold {currency}; allowed: {}",
                tenant.currencies
            ),
        ));
    }
    let customer = CustomerId::parse(customer_id)
        .ok_or_else(|| AppError::invalid("customer_id", "no such customer"))?;
    if core
        .store
        .get_customer(tenant_id, customer.as_str())
        .await?
        .is_none()
    {
        return Err(AppError::invalid("customer_id", "no such customer"));
    }
    crate::service::privacy::refuse_if_erased(core, tenant_id, customer.as_str()).await?;
    let id = AccountId::generate();
    let account = NewAccount {
        id: id.clone(),
        tenant_id: tenant_id.clone(),
        customer_id: Some(customer),
        kind: AccountKind::Customer,
        currency: currency.code().to_owned(),
        overdraft_limit: 0,
        created_at: core.clock.now(),
    };
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "account.open",
        Some(("account", id.as_str())),
        Outcome::Success,
        None,
    );
    match core.store.open_account(&account, &[ev]).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(AppError::Conflict {
                code: "account_exists",
                param: Some("currency".into()),
                message: format!("this customer already has a {currency} account"),
            });
        }
        Err(e) => return Err(e.into()),
    }
    core.store
        .get_account(tenant_id, id.as_str())
        .await?
        .ok_or(AppError::NotFound("account"))
}

/// An account the caller may see under `perm` (404 otherwise, as for a missing one).
pub(super) async fn visible_account(
    core: &Core,
    actor: &Principal,
    id: &str,
    perm: Permission,
) -> AppResult<AccountRecord> {
    let owner = owner_filter(core, actor, perm).await?;
    let account = match AccountId::parse(id) {
        Some(_) => core.store.get_account(actor.tenant()?, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("account"))?;
    if owner.is_some() && account.customer_id != owner {
        return Err(AppError::NotFound("account"));
    }
    // System accounts exist only for holders of `accounts:read_system`.
    if account.kind != AccountKind::Customer.as_str() && !sees_system(actor) {
        return Err(AppError::NotFound("account"));
    }
    Ok(account)
}

/// Whether the caller may see system accounts (settlement, fees, suspense) by id.
pub fn sees_system(actor: &Principal) -> bool {
    actor.permissions.scope(Permission::AccountsReadSystem) == Some(Scope::All)
}

pub async fn get_account(core: &Core, actor: &Principal, id: &str) -> AppResult<AccountRecord> {
    let a = visible_account(core, actor, id, Permission::AccountsRead).await?;
    with_expired_released(core, actor.tenant()?, a).await
}

pub async fn list_accounts(
    core: &Core,
    actor: &Principal,
    customer: Option<&str>,
    page: &Page,
) -> AppResult<Listed<AccountRecord>> {
    let owner = owner_filter(core, actor, Permission::AccountsRead).await?;
    let filter = match (owner, customer) {
        (Some(o), Some(c)) if o != c => {
            return Ok(Listed {
                data: vec![],
                has_more: false,
            });
        }
        (Some(o), _) => Some(o),
        (None, c) => c.map(str::to_owned),
    };
    let tenant = actor.tenant()?;
    let mut rows = Vec::new();
    for a in core
        .store
        .list_accounts(tenant, filter.as_deref(), sees_system(actor), page)
        .await?
    {
        rows.push(with_expired_released(core, tenant, a).await?);
    }
    Ok(Listed::from_rows(rows, page))
}

pub async fn list_entries(
    core: &Core,
    actor: &Principal,
    account: &str,
    page: &Page,
) -> AppResult<Listed<EntryRecord>> {
    let account = visible_account(core, actor, account, Permission::AccountsRead).await?;
    let rows = core
        .store
        .list_entries(actor.tenant()?, &account.id, page)
        .await?;
    Ok(Listed::from_rows(rows, page))
}

/// Freeze (`frozen`), unfreeze (`active`) or close (`closed`) an account. A reason code is
/// required to freeze (`FreezeReason`) or unfreeze (`UnfreezeReason`) and optional to close
/// (`CloseReason`; required with a note). The audit record carries the code and the note's id;
/// the note itself is sealed, staff-only, and written in the same transaction.
pub async fn set_status(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    status: &'static str,
    reason: Option<String>,
    note: Option<String>,
) -> AppResult<AccountRecord> {
    use crate::domain::reasons::{CloseReason, FreezeReason, ReasonCode, UnfreezeReason};
    let perm = if status == "closed" {
        Permission::AccountsConfigure
    } else {
        Permission::AccountsFreeze
    };
    let account = visible_account(core, actor, id, perm).await?;
    fn code<T: ReasonCode>(raw: Option<&str>) -> AppResult<Option<&'static str>> {
        raw.map(|r| {
            T::parse(r)
                .map(T::as_str)
                .map_err(|m| AppError::invalid("reason", m))
        })
        .transpose()
    }
    let raw = reason.as_deref();
    let code = match status {
        "frozen" => code::<FreezeReason>(raw)?,
        "active" => code::<UnfreezeReason>(raw)?,
        _ => code::<CloseReason>(raw)?,
    };
    let note = crate::service::staff_notes::parse_note(note.as_deref())?;
    let code = match (code, status, &note) {
        (Some(c), _, _) => Some(c),
        (None, "closed", None) => None,
        (None, "frozen", _) => {
            return Err(AppError::invalid(
                "reason",
                format!("required: one of {}", FreezeReason::codes().join(", ")),
            ));
        }
        (None, "active", _) => {
            return Err(AppError::invalid(
                "reason",
                format!("required: one of {}", UnfreezeReason::codes().join(", ")),
            ));
        }
        (None, _, _) => {
            return Err(AppError::invalid(
                "reason",
                format!(
                    "required with a note: one of {}",
                    CloseReason::codes().join(", ")
                ),
            ));
        }
    };
    if account.kind != "customer" {
        return Err(AppError::Unprocessable {
            code: "system_account",
            message: "system accounts cannot change status".into(),
        });
    }
    let action = match status {
        "frozen" => "account.freeze",
        "active" => "account.unfreeze",
        _ => "account.close",
    };
    let sealed = match code {
        Some(c) => {
            crate::service::staff_notes::seal(
                core,
                actor,
                ("account", &account.id),
                // An account's freeze or closure note is an AML record the tenant keeps after
                // an erasure: under the tenant's key (docs/SECURITY.md, Tipping off).
                None,
                action,
                c,
                note.as_ref(),
            )
            .await?
        }
        None => None,
    };
    let audit_reason = code
        .map(|c| crate::domain::reasons::audit_reason(c, sealed.as_ref().map(|n| n.id.as_str())));
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        action,
        Some(("account", &account.id)),
        Outcome::Success,
        audit_reason.as_deref(),
    );
    let tenant = actor.tenant()?;
    match core
        .store
        .set_account_status(
            tenant,
            &account.id,
            status,
            core.clock.now(),
            &[ev],
            sealed.as_ref(),
        )
        .await?
    {
        Some(a) => Ok(a),
        None if account.status == "closed" => Err(AppError::Unprocessable {
            code: "account_closed",
            message: "the account is closed".into(),
        }),
        None => Err(AppError::Unprocessable {
            code: "account_not_empty",
            message: "an account closes only at zero balance with nothing pending".into(),
        }),
    }
}

pub async fn set_overdraft(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    limit: i64,
) -> AppResult<AccountRecord> {
    if !(0..=crate::domain::ledger::MAX_AMOUNT).contains(&limit) {
        return Err(AppError::invalid(
            "overdraft_limit",
            "must be between 0 and 10^15 minor units",
        ));
    }
    let account = visible_account(core, actor, id, Permission::AccountsConfigure).await?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "account.overdraft.set",
        Some(("account", &account.id)),
        Outcome::Success,
        Some(&limit.to_string()),
    );
    core.store
        .set_overdraft(actor.tenant()?, &account.id, limit, core.clock.now(), &[ev])
        .await?
        .ok_or_else(|| AppError::Unprocessable {
            code: "overdraft_below_balance",
            message:
                "the account's balance is already below that limit, or it is not a customer account"
                    .into(),
        })
}

/// Holds past expiry stop counting against the available balance (and as pending credits) at
/// once, even before the next movement on the account releases them.
pub(super) async fn with_expired_released(
    core: &Core,
    tenant: &TenantId,
    mut a: AccountRecord,
) -> AppResult<AccountRecord> {
    let (debits, credits) = core
        .store
        .expired_holds(tenant, &a.id, core.clock.now())
        .await?;
    a.pending_debits -= debits;
    a.pending_credits -= credits;
    Ok(a)
}

/// The system accounts a tenant gets for each of its currencies.
pub fn system_accounts(
    tenant: &TenantId,
    currencies: &[Currency],
    now: crate::clock::Timestamp,
) -> Vec<NewAccount> {
    currencies
        .iter()
        .flat_map(|c| {
            AccountKind::SYSTEM.into_iter().map(move |kind| NewAccount {
                id: AccountId::generate(),
                tenant_id: tenant.clone(),
                customer_id: None,
                kind,
                currency: c.code().to_owned(),
                overdraft_limit: kind.initial_overdraft(),
                created_at: now,
            })
        })
        .collect()
}
