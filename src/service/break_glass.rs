//! Break-glass: the only way the platform restores a tenant's administration (its managers
//! lost their access, left, or are locked out), and a two-person one. One platform admin
//! requests an invitation of a new MANAGER for the tenant ([`request`]); a second platform
//! admin approves it within [`APPROVAL_WINDOW_SECONDS`] ([`approve`]), which invites the
//! MANAGER by email as any invitation does: no platform admin ever learns or sets the
//! password. The database refuses an approval by the requester; a platform with a single
//! admin cannot use the procedure and says so. Every step (request, approval, refusal) is
//! recorded in the tenant's audit chain as well as the platform's, as a security event.

use super::invitations::{self, Issuer};
use super::{AuditBuilder, Core, Listed, Principal, RequestMeta, security};
use crate::domain::audit::{NewAuditEvent, Outcome};
use crate::domain::authz::Role;
use crate::domain::security::SecurityEvent;
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::{BreakGlassId, TenantId};
use crate::store::identity::{ApproveOutcome, BreakGlassRecord, NewBreakGlass};
use crate::store::{Page, StoreError, TenantRecord};

/// How long a request waits for its second platform admin.
pub const APPROVAL_WINDOW_SECONDS: i64 = 24 * 3600;

async fn tenant(core: &Core, id: &str) -> AppResult<TenantRecord> {
    let id = TenantId::parse(id).ok_or(AppError::NotFound("tenant"))?;
    core.store
        .get_tenant(&id)
        .await?
        .ok_or(AppError::NotFound("tenant"))
}

/// The same record in the platform's chain and, as a security event, in the tenant's.
fn both_chains(
    audit: &AuditBuilder<'_>,
    tenant: &TenantId,
    kind: SecurityEvent,
    action: &str,
    target: (&str, &str),
    outcome: Outcome,
    reason: Option<&str>,
) -> [NewAuditEvent; 2] {
    [
        audit.event(None, action, Some(target), outcome, reason),
        security::event(
            audit,
            Some(tenant),
            kind,
            action,
            Some(target),
            outcome,
            reason,
        ),
    ]
}

#[allow(clippy::too_many_arguments)]
async fn refuse(
    core: &Core,
    audit: &AuditBuilder<'_>,
    tenant: &TenantId,
    kind: SecurityEvent,
    action: &str,
    target: (&str, &str),
    reason: &str,
    error: AppError,
) -> AppError {
    for ev in both_chains(
        audit,
        tenant,
        kind,
        action,
        target,
        Outcome::Denied,
        Some(reason),
    ) {
        security::record(core, ev).await;
    }
    error
}

/// `POST /v1/tenants/{id}/break-glass`: asks for an invitation of a new MANAGER (`email`)
/// for the tenant. Needs step-up, and a second active platform admin to approve it.
pub async fn request(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    tenant_id: &str,
    email: &str,
) -> AppResult<BreakGlassRecord> {
    let t = tenant(core, tenant_id).await?;
    let tenant = TenantId::from_trusted(t.id.clone());
    let email = Email::parse(email).map_err(|m| AppError::invalid("email", m))?;
    security::require_step_up(core, meta, actor).await?;
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let action = "tenant.break_glass.request";
    if core.store.count_platform_admins().await? < 2 {
        return Err(refuse(
            core,
            &audit,
            &tenant,
            SecurityEvent::BreakGlassRequested,
            action,
            ("tenant", tenant.as_str()),
            "single_platform_admin",
            AppError::Conflict {
                code: "break_glass_needs_two_admins",
                param: None,
                message: "break-glass needs a second platform admin to approve the request, and \
                          this platform has only one: create another with `kasho admin \
                          create-platform-admin` first"
                    .into(),
            },
        )
        .await);
    }
    if super::users::find_by_email(core, Some(&tenant), &email)
        .await?
        .is_some()
    {
        return Err(email_taken());
    }
    let now = core.clock.now();
    let id = BreakGlassId::generate();
    let row = NewBreakGlass {
        id: id.to_string(),
        tenant_id: tenant.clone(),
        email: email.as_str().to_owned(),
        requested_by: actor.user_id.clone(),
        requested_at: now,
        expires_at: now.plus_seconds(APPROVAL_WINDOW_SECONDS),
    };
    let events = both_chains(
        &audit,
        &tenant,
        SecurityEvent::BreakGlassRequested,
        action,
        ("break_glass_request", id.as_str()),
        Outcome::Success,
        None,
    );
    core.store.create_break_glass(&row, &events).await?;
    core.store
        .get_break_glass(&tenant, id.as_str())
        .await?
        .ok_or(AppError::NotFound("break-glass request"))
}

fn email_taken() -> AppError {
    AppError::Conflict {
        code: "email_taken",
        param: Some("email".into()),
        message: "a user with this email already exists in this tenant".into(),
    }
}

/// `POST /v1/tenants/{id}/break-glass/{request_id}/approve`: a second platform admin approves
/// a pending request within 24 hours; the new MANAGER is invited by email.
pub async fn approve(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    tenant_id: &str,
    request_id: &str,
) -> AppResult<BreakGlassRecord> {
    let t = tenant(core, tenant_id).await?;
    let tenant = TenantId::from_trusted(t.id.clone());
    let request = match BreakGlassId::parse(request_id) {
        Some(id) => core.store.get_break_glass(&tenant, id.as_str()).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("break-glass request"))?;
    security::require_step_up(core, meta, actor).await?;
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let action = "tenant.break_glass.approve";
    let target = ("break_glass_request", request.id.as_str());
    let email = Email::parse(&request.email).map_err(AppError::internal)?;
    let invite = invitations::prepare(
        core,
        &tenant,
        email,
        vec![Role::Manager],
        Issuer::BreakGlass,
        Some(actor.user_id.as_str()),
    )
    .await?;
    let [platform, in_tenant] = both_chains(
        &audit,
        &tenant,
        SecurityEvent::BreakGlassApproved,
        action,
        target,
        Outcome::Success,
        Some(&format!("requested_by={}", request.requested_by)),
    );
    let created = audit.event(
        Some(&tenant),
        "user.create",
        Some(("user", invite.user.id.as_str())),
        Outcome::Success,
        Some("break_glass"),
    );
    let outcome = core
        .store
        .approve_break_glass(
            &tenant,
            &request.id,
            &actor.user_id,
            &invite,
            &[platform, in_tenant, created],
        )
        .await;
    let (reason, error) = match outcome {
        Ok(ApproveOutcome::Approved(r)) => return Ok(r),
        Ok(ApproveOutcome::NotFound) => return Err(AppError::NotFound("break-glass request")),
        Ok(ApproveOutcome::AlreadyApproved) => (
            "already_approved",
            AppError::Conflict {
                code: "break_glass_already_approved",
                param: None,
                message: "this request has already been approved".into(),
            },
        ),
        Ok(ApproveOutcome::Expired) => (
            "expired",
            AppError::Conflict {
                code: "break_glass_expired",
                param: None,
                message: "this request is more than 24 hours old: ask for a new one".into(),
            },
        ),
        Ok(ApproveOutcome::SameAdmin) => (
            "same_admin",
            AppError::Forbidden {
                code: "break_glass_same_admin",
                message: "the platform admin who requested break-glass cannot approve it: a \
                          second platform admin must"
                    .into(),
            },
        ),
        Err(StoreError::Conflict { .. }) => ("email_taken", email_taken()),
        Err(e) => return Err(e.into()),
    };
    Err(refuse(
        core,
        &audit,
        &tenant,
        SecurityEvent::BreakGlassApproved,
        action,
        target,
        reason,
        error,
    )
    .await)
}

/// A tenant's break-glass requests, newest first.
pub async fn list(
    core: &Core,
    tenant_id: &str,
    page: &Page,
) -> AppResult<Listed<BreakGlassRecord>> {
    let t = tenant(core, tenant_id).await?;
    let rows = core
        .store
        .list_break_glass(&TenantId::from_trusted(t.id), page)
        .await?;
    Ok(Listed::from_rows(rows, page))
}
