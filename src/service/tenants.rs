//! Tenant lifecycle (platform admins only): create with an initial MANAGER (invited: it
//! chooses its own password), list, read, suspend (which also ends every session of the
//! tenant) and reactivate. Restoring a tenant's administration is `service::break_glass`.

use super::invitations::{self, Issuer};
use super::{AuditBuilder, Core, Listed, Principal, RequestMeta, security};
use crate::config::ACCESS_TTL_BOUNDS;
use crate::domain::audit::Outcome;
use crate::domain::authz::Role;
use crate::domain::currency::parse_currency_list;
use crate::domain::values::{DisplayName, Email, Slug};
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::store::{NewTenant, NewUser, Page, StoreError, TenantRecord};

pub struct CreateTenant {
    pub slug: String,
    pub name: String,
    pub currencies: Vec<String>,
    pub manager_email: String,
    pub access_token_ttl_seconds: Option<i64>,
}

/// Creates the tenant with its system accounts and its first MANAGER, who is invited by email
/// (a platform admin never learns or sets a tenant user's password). Needs step-up: it
/// creates a user with a staff role.
pub async fn create(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: CreateTenant,
) -> AppResult<(TenantRecord, UserId)> {
    let slug = Slug::parse(&input.slug).map_err(|m| AppError::invalid("slug", m))?;
    let name = DisplayName::parse(&input.name).map_err(|m| AppError::invalid("name", m))?;
    let currencies =
        parse_currency_list(&input.currencies).map_err(|m| AppError::invalid("currencies", m))?;
    let email =
        Email::parse(&input.manager_email).map_err(|m| AppError::invalid("manager.email", m))?;
    if let Some(ttl) = input.access_token_ttl_seconds
        && !(ACCESS_TTL_BOUNDS.0..=ACCESS_TTL_BOUNDS.1).contains(&ttl)
    {
        return Err(AppError::invalid(
            "access_token_ttl_seconds",
            format!(
                "must be between {} and {}",
                ACCESS_TTL_BOUNDS.0, ACCESS_TTL_BOUNDS.1
            ),
        ));
    }
    security::require_step_up(core, meta, actor).await?;
    let slug_taken = || AppError::Conflict {
        code: "slug_taken",
        param: Some("slug".into()),
        message: format!("a tenant with slug `{}` already exists", slug.as_str()),
    };
    if core
        .store
        .get_tenant_by_slug(slug.as_str())
        .await?
        .is_some()
    {
        return Err(slug_taken());
    }

    let now = core.clock.now();
    let tenant_id = TenantId::generate();
    let manager_id = UserId::generate();
    let tenant = NewTenant {
        id: tenant_id.clone(),
        slug: slug.as_str().to_owned(),
        name: name.as_str().to_owned(),
        currencies: currencies
            .iter()
            .map(|c| c.code())
            .collect::<Vec<_>>()
            .join(","),
        access_token_ttl_seconds: input.access_token_ttl_seconds,
        created_at: now,
    };
    let manager = NewUser {
        id: manager_id.clone(),
        tenant_id: Some(tenant_id.clone()),
        email_hash: super::users::email_hash(core, Some(&tenant_id), email.as_str()),
        email: email.as_str().to_owned(),
        password_hash: invitations::unknown_password_hash(core).await?,
        roles: vec![Role::Manager],
        created_at: now,
    };
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let events = [
        audit.event(
            None,
            "tenant.create",
            Some(("tenant", tenant_id.as_str())),
            Outcome::Success,
            None,
        ),
        audit.event(
            Some(&tenant_id),
            "tenant.create",
            Some(("tenant", tenant_id.as_str())),
            Outcome::Success,
            None,
        ),
        audit.event(
            Some(&tenant_id),
            "user.create",
            Some(("user", manager_id.as_str())),
            Outcome::Success,
            Some("invited"),
        ),
    ];
    let system_accounts = super::ledger::system_accounts(&tenant_id, &currencies, now);
    match core
        .store
        .create_tenant(&tenant, &manager, &system_accounts, &events)
        .await
    {
        Ok(()) => {}
        // Lost a race with a concurrent create of the same slug.
        Err(StoreError::Conflict { .. }) => return Err(slug_taken()),
        Err(e) => return Err(e.into()),
    }
    // The invitation is sealed under the tenant's data key, which exists only now that the
    // tenant does; the link and its email are written together. Should this step fail, the
    // manager stays invited without a link: `kasho admin invitation-link` issues one.
    let stored = core
        .store
        .get_user(Some(&tenant_id), &manager_id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    let sent = invitations::send(
        core,
        &tenant_id,
        &stored,
        Issuer::PlatformAdmin,
        Some(actor.user_id.as_str()),
        None,
        &[],
    )
    .await;
    if let Err(e) = &sent {
        tracing::error!(
            tenant_id = %tenant_id,
            error = %e,
            "the first manager's invitation could not be queued; issue a link with \
             `kasho admin invitation-link`"
        );
    }
    let record = core
        .store
        .get_tenant(&tenant_id)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    Ok((record, manager_id))
}

pub async fn get(core: &Core, id: &str) -> AppResult<TenantRecord> {
    let id = TenantId::parse(id).ok_or(AppError::NotFound("tenant"))?;
    core.store
        .get_tenant(&id)
        .await?
        .ok_or(AppError::NotFound("tenant"))
}

pub async fn list(core: &Core, page: &Page) -> AppResult<Listed<TenantRecord>> {
    let rows = core.store.list_tenants(page).await?;
    Ok(Listed::from_rows(rows, page))
}

/// `suspend = true` suspends (and ends every session); `false` reactivates.
pub async fn set_suspended(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    suspend: bool,
) -> AppResult<TenantRecord> {
    let id = TenantId::parse(id).ok_or(AppError::NotFound("tenant"))?;
    let (status, action) = if suspend {
        ("suspended", "tenant.suspend")
    } else {
        ("active", "tenant.reactivate")
    };
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let events = [
        audit.event(
            None,
            action,
            Some(("tenant", id.as_str())),
            Outcome::Success,
            None,
        ),
        audit.event(
            Some(&id),
            action,
            Some(("tenant", id.as_str())),
            Outcome::Success,
            None,
        ),
    ];
    core.session_cache
        .after(
            core.store
                .set_tenant_status(&id, status, core.clock.now(), &events),
        )
        .await?
        .ok_or(AppError::NotFound("tenant"))
}
