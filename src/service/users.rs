//! Tenant users: invite, list, read, disable/enable, assign roles. All of it inside the
//! caller's tenant; a user of another tenant is "not found", exactly like a missing one.
//! A caller can never grant (or touch a user holding) a permission it does not hold itself.
//! Nobody sets another person's password: a new user is invited (`service::invitations`) and
//! chooses its own. No user holds a pair of roles the tenant's policy forbids together
//! (MANAGER with COMPLIANCE_OFFICER always), and the tenant's last active MANAGER keeps the
//! role (the store checks it in the change's transaction).

use super::duties::check_role_pairs;
use super::invitations::{self, Issuer};
use super::{AuditBuilder, Core, Listed, Principal, RequestMeta, security};
use crate::domain::audit::Outcome;
use crate::domain::authz::{
    Permission, PermissionSet, Role, Scope, parse_tenant_roles, roles_from_storage,
};
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::store::{Page, StoreError, UserChange, UserRecord};

pub struct CreateUser {
    pub email: String,
    pub roles: Vec<String>,
}

/// Refuses roles whose permissions the caller does not hold at least as widely.
pub(crate) fn check_grantable(actor: &Principal, roles: &[Role]) -> AppResult<()> {
    // What the caller holds, plus what its roles may hand out without holding (see
    // `authz::GRANT_WITHOUT_HOLDING`); a principal narrower than its roles gets no extra.
    let grantable = if actor.permissions == PermissionSet::for_roles(&actor.roles) {
        PermissionSet::grantable_by(&actor.roles)
    } else {
        actor.permissions.clone()
    };
    grantable
        .covers(&PermissionSet::for_roles(roles))
        .map_err(|perm| AppError::Forbidden {
            code: "role_not_grantable",
            message: format!(
                "you cannot grant or change roles carrying `{perm}`, which you do not hold"
            ),
        })
}

/// Invites a user into the caller's tenant: stored with status `invited`, it gets a link by
/// email and chooses its own password (`POST /v1/invitations/accept`). Inviting anyone with a
/// staff role needs step-up (so API tokens cannot).
pub async fn create(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: CreateUser,
) -> AppResult<UserRecord> {
    let tenant = actor.tenant()?;
    let email = Email::parse(&input.email).map_err(|m| AppError::invalid("email", m))?;
    let roles = parse_tenant_roles(&input.roles).map_err(|m| AppError::invalid("roles", m))?;
    check_grantable(actor, &roles)?;
    check_role_pairs(core, meta, actor, None, &roles).await?;
    if roles.iter().any(|r| r.is_staff()) {
        security::require_step_up(core, meta, actor).await?;
    }
    let taken = || AppError::Conflict {
        code: "email_taken",
        param: Some("email".into()),
        message: "a user with this email already exists in this tenant".into(),
    };
    if core
        .store
        .find_user_by_email(Some(tenant), &email)
        .await?
        .is_some()
    {
        return Err(taken());
    }
    let mut invite = invitations::prepare(
        core,
        tenant,
        email,
        roles,
        Issuer::User,
        Some(actor.user_id.as_str()),
    )
    .await?;
    invite.invitation.actor = Some(actor.actor_check());
    let id = invite.user.id.clone();
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "user.create",
        Some(("user", id.as_str())),
        Outcome::Success,
        Some("invited"),
    );
    match core.store.invite_user(&invite, &[ev]).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => return Err(taken()),
        Err(e) => return Err(e.into()),
    }
    core.store
        .get_user(Some(tenant), &id)
        .await?
        .ok_or(AppError::NotFound("user"))
}

/// Parses a user id from a path and applies the ownership scope: under `Own`, anyone but the
/// caller is "not found".
fn target(actor: &Principal, id: &str, perm: Permission) -> AppResult<UserId> {
    let id = UserId::parse(id).ok_or(AppError::NotFound("user"))?;
    if actor.scope(perm)? == Scope::Own && id != actor.user_id {
        return Err(AppError::NotFound("user"));
    }
    Ok(id)
}

pub async fn get(core: &Core, actor: &Principal, id: &str) -> AppResult<UserRecord> {
    let id = target(actor, id, Permission::UsersRead)?;
    core.store
        .get_user(Some(actor.tenant()?), &id)
        .await?
        .ok_or(AppError::NotFound("user"))
}

pub async fn list(core: &Core, actor: &Principal, page: &Page) -> AppResult<Listed<UserRecord>> {
    let only = match actor.scope(Permission::UsersRead)? {
        Scope::Own => Some(&actor.user_id),
        Scope::All => None,
    };
    let rows = core.store.list_users(actor.tenant()?, only, page).await?;
    Ok(Listed::from_rows(rows, page))
}

pub async fn set_disabled(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    disable: bool,
) -> AppResult<UserRecord> {
    let id = target(actor, id, Permission::UsersWrite)?;
    if disable && id == actor.user_id {
        return Err(AppError::Unprocessable {
            code: "cannot_disable_self",
            message: "you cannot disable your own account".into(),
        });
    }
    let (status, action) = if disable {
        ("disabled", "user.disable")
    } else {
        // Enabling grants access back: a recent authentication, never an API token.
        super::security::require_step_up(core, meta, actor).await?;
        ("active", "user.enable")
    };
    change(core, meta, actor, &id, UserChange::Status(status), action).await
}

pub async fn set_roles(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    roles: &[String],
) -> AppResult<UserRecord> {
    let id = target(actor, id, Permission::UsersWrite)?;
    let roles = parse_tenant_roles(roles).map_err(|m| AppError::invalid("roles", m))?;
    if id == actor.user_id {
        return Err(AppError::Unprocessable {
            code: "cannot_change_own_roles",
            message: "you cannot change your own roles".into(),
        });
    }
    check_grantable(actor, &roles)?;
    check_role_pairs(core, meta, actor, Some(id.as_str()), &roles).await?;
    super::security::require_step_up(core, meta, actor).await?;
    change(
        core,
        meta,
        actor,
        &id,
        UserChange::Roles(roles),
        "user.roles.update",
    )
    .await
}

async fn change(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &UserId,
    change: UserChange,
    action: &str,
) -> AppResult<UserRecord> {
    let tenant = actor.tenant()?;
    let current = core
        .store
        .get_user(Some(tenant), id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    // Nobody manages a user more privileged than themselves.
    check_grantable(actor, &roles_from_storage(&current.roles))?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        action,
        Some(("user", id.as_str())),
        Outcome::Success,
        None,
    );
    core.store
        .update_user(
            tenant,
            id,
            &change,
            core.clock.now(),
            Some(&actor.actor_check()),
            &[ev],
        )
        .await?
        .ok_or(AppError::NotFound("user"))
}

/// Resets another user's second factor (a user manager, with step-up): their authenticator and
/// recovery codes are removed and every session of theirs ends, so whoever enrolled a factor
/// on a stolen session loses it; the user enrols again at the next sign-in. Audited, and a
/// security event.
pub async fn reset_mfa(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<UserRecord> {
    let id = target(actor, id, Permission::UsersWrite)?;
    let tenant = actor.tenant()?;
    if id == actor.user_id {
        return Err(AppError::Unprocessable {
            code: "cannot_reset_own_mfa",
            message: "reset your own second factor by enrolling a new one (POST /v1/me/mfa/totp)"
                .into(),
        });
    }
    let user = core
        .store
        .get_user(Some(tenant), &id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    super::security::require_step_up(core, meta, actor).await?;
    check_grantable(actor, &roles_from_storage(&user.roles))?;
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let now = core.clock.now();
    let ev = audit
        .own(
            "user.mfa.reset",
            Some(("user", id.as_str())),
            Outcome::Success,
            None,
        )
        .security(crate::domain::security::SecurityEvent::MfaReset);
    if !core
        .store
        .disable_mfa(
            Some(tenant),
            &id,
            now,
            Some(&actor.actor_check()),
            std::slice::from_ref(&ev),
        )
        .await?
    {
        return Err(AppError::Conflict {
            code: "mfa_not_enabled",
            param: None,
            message: "this user has no second factor to reset".into(),
        });
    }
    tracing::warn!(
        security_event = "mfa_reset",
        tenant_id = %tenant,
        "security event"
    );
    core.store
        .revoke_user_sessions(Some(tenant), &id, None, None, "mfa_reset", now, &[])
        .await?;
    Ok(user)
}
