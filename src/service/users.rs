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
use crate::crypto::envelope::is_ciphertext;
use crate::domain::audit::Outcome;
use crate::domain::authz::{
    Permission, PermissionSet, Role, Scope, parse_tenant_roles, roles_from_storage,
};
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::service::keys::KeyOwner;
use crate::store::keys::USER_EMAIL;
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
    if find_by_email(core, Some(tenant), &email).await?.is_some() {
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
    let user = core
        .store
        .get_user(Some(tenant), &id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    opened(core, user).await
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
    let user = core
        .store
        .get_user(Some(actor.tenant()?), &id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    opened(core, user).await
}

pub async fn list(core: &Core, actor: &Principal, page: &Page) -> AppResult<Listed<UserRecord>> {
    let only = match actor.scope(Permission::UsersRead)? {
        Scope::Own => Some(&actor.user_id),
        Scope::All => None,
    };
    let mut rows = Vec::new();
    for u in core.store.list_users(actor.tenant()?, only, page).await? {
        rows.push(opened(core, u).await?);
    }
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
    let user = core
        .session_cache
        .after(core.store.update_user(
            tenant,
            id,
            &change,
            core.clock.now(),
            Some(&actor.actor_check()),
            &[ev],
        ))
        .await?
        .ok_or(AppError::NotFound("user"))?;
    let user = seal_if_customer_login(core, user).await?;
    opened(core, user).await
}

/// A staff login whose roles became only CUSTOMER is a customer's login from now on: its
/// clear email is sealed under its own key (compare-and-swap: a concurrent change wins).
async fn seal_if_customer_login(core: &Core, user: UserRecord) -> AppResult<UserRecord> {
    let Some(tenant) = user.tenant_id.as_deref().and_then(TenantId::parse) else {
        return Ok(user);
    };
    if !is_customer_login(&roles_from_storage(&user.roles)) || is_ciphertext(&user.stored_email) {
        return Ok(user);
    }
    let hash = email_hash(core, Some(&tenant), &user.stored_email);
    let sealed = core
        .keyring
        .seal(
            &tenant,
            &login_owner(&user.id),
            USER_EMAIL,
            &user.id,
            user.stored_email.as_bytes(),
        )
        .await?;
    core.store
        .set_user_email(&user.id, &user.stored_email, &sealed, &hash)
        .await?;
    Ok(UserRecord {
        stored_email: sealed,
        ..user
    })
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
        .session_cache
        .after(core.store.disable_mfa(
            Some(tenant),
            &id,
            now,
            Some(&actor.actor_check()),
            std::slice::from_ref(&ev),
        ))
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
    core.session_cache
        .after(core.store.revoke_user_sessions(
            Some(tenant),
            &id,
            None,
            None,
            "mfa_reset",
            now,
            &[],
        ))
        .await?;
    opened(core, user).await
}

// ------------------------------------------------------------------ logins' emails at rest

/// Whether a login with `roles` is a customer's (holds only the CUSTOMER role, as an erasure
/// judges it): its email is sealed under its own key; a staff login keeps it in clear.
pub fn is_customer_login(roles: &[Role]) -> bool {
    !roles.is_empty() && roles.iter().all(|r| *r == Role::Customer)
}

/// The data key that seals what names the customer login `id`: its email and the mail
/// addressed to it. Destroyed by the customer's erasure.
pub fn login_owner(id: &str) -> KeyOwner {
    KeyOwner::Login(id.to_owned())
}

/// The key that seals mail to a login with `roles`: its own for a customer's login, the
/// tenant's otherwise.
pub fn mail_owner(id: &str, roles: &[Role]) -> KeyOwner {
    if is_customer_login(roles) {
        login_owner(id)
    } else {
        KeyOwner::Tenant
    }
}

/// The keyed hash by which a login is looked up and kept unique (`users.email_hash`).
pub fn email_hash(core: &Core, tenant: Option<&TenantId>, email: &str) -> String {
    core.login_email_key.hash(tenant, email)
}

/// What `users.email` stores for a new login `id`: the address sealed under the login's own
/// key for a customer's login (a tenant's), in clear otherwise; and its lookup hash.
pub async fn stored_email(
    core: &Core,
    tenant: Option<&TenantId>,
    id: &UserId,
    email: &Email,
    roles: &[Role],
) -> AppResult<(String, String)> {
    let hash = email_hash(core, tenant, email.as_str());
    let stored = match tenant {
        Some(t) if is_customer_login(roles) => {
            core.keyring
                .seal(
                    t,
                    &login_owner(id.as_str()),
                    USER_EMAIL,
                    id.as_str(),
                    email.as_str().as_bytes(),
                )
                .await?
        }
        _ => email.as_str().to_owned(),
    };
    Ok((stored, hash))
}

/// A login's email address: opened when it is sealed (a customer's login).
pub async fn email_of(core: &Core, user: &UserRecord) -> AppResult<String> {
    if !is_ciphertext(&user.stored_email) {
        return Ok(user.stored_email.clone());
    }
    let tenant = user.tenant_id.as_deref().unwrap_or("");
    let opened = core
        .keyring
        .open_text(&USER_EMAIL.at(tenant, &user.id), &user.stored_email)
        .await?;
    Ok(opened.as_str().to_owned())
}

/// `user` with its email opened, for an answer that shows it to someone allowed to see it.
pub async fn opened(core: &Core, mut user: UserRecord) -> AppResult<UserRecord> {
    user.stored_email = email_of(core, &user).await?;
    Ok(user)
}

/// The login of `email` in a scope, looked up by its keyed hash (its email still sealed).
pub async fn find_by_email(
    core: &Core,
    tenant: Option<&TenantId>,
    email: &Email,
) -> AppResult<Option<UserRecord>> {
    Ok(core
        .store
        .find_user_by_email(tenant, &email_hash(core, tenant, email.as_str()), email)
        .await?)
}

/// Hashes the emails of logins written before `users.email_hash` existed, sealing a customer
/// login's under its own key on the way (compare-and-swap per row). Runs at every start
/// (`kasho serve`). Returns how many logins it converted.
pub async fn seal_login_emails(core: &Core) -> AppResult<u64> {
    let mut done = 0u64;
    let mut after: Option<String> = None;
    loop {
        let batch = core
            .store
            .users_without_email_hash(after.as_deref(), 100)
            .await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id.clone());
        for u in &batch {
            if is_ciphertext(&u.stored_email) {
                continue;
            }
            let tenant = u.tenant_id.as_deref().and_then(TenantId::parse);
            let hash = email_hash(core, tenant.as_ref(), &u.stored_email);
            let roles = roles_from_storage(&u.roles);
            // An erased login (`erased+<id>@invalid`, no password) only gets its hash.
            let erased = u.password_hash == "!erased";
            let stored = match &tenant {
                Some(t) if is_customer_login(&roles) && !erased => {
                    core.keyring
                        .seal(
                            t,
                            &login_owner(&u.id),
                            USER_EMAIL,
                            &u.id,
                            u.stored_email.as_bytes(),
                        )
                        .await?
                }
                _ => u.stored_email.clone(),
            };
            if core
                .store
                .set_user_email(&u.id, &u.stored_email, &stored, &hash)
                .await?
            {
                done += 1;
            }
        }
    }
    Ok(done)
}
