//! Invitations: how a person gets their first password. Nobody sets another person's password:
//! creating a user (`POST /v1/users`, the first MANAGER of `POST /v1/tenants`, a break-glass
//! approval) stores it with status `invited` and a password hash nobody knows, and mails it a
//! link through the outbox (in development, an `.eml` file in `<data_dir>/mailbox/`).
//!
//! - The link's fragment carries a single-use token of 256 random bits; only its SHA-256 digest
//!   is stored. It works for [`TOKEN_TTL_SECONDS`] (72 hours); a newer link for the same user
//!   ([`reinvite`], or `kasho admin invitation-link` at the console, [`console_link`])
//!   invalidates the older ones.
//! - [`accept`] takes the token and a password checked by the tenant's password policy, and in
//!   one transaction spends the link, sets the password and activates the user, who then signs
//!   in (and enrols MFA at the first sign-in where its role requires it) as anyone else.
//! - The invitation, the link and the email are written in one transaction with the audit
//!   record (`user.create`, `user.reinvite`), so no link exists without its record.

use secrecy::{ExposeSecret, SecretString};

use super::{AuditBuilder, Core, Principal, RequestMeta, mail, passwords, security};
use crate::clock::Timestamp;
use crate::crypto::{random_token, sha256_hex};
use crate::domain::audit::{ActorType, NewAuditEvent, Outcome};
use crate::domain::authz::{Permission, Role, Scope, roles_from_storage};
use crate::domain::security::SecurityEvent;
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::store::identity::{Acceptance, NewInvitation, NewInvite};
use crate::store::mail::NewOutboxMessage;
use crate::store::{NewUser, UserRecord};

/// How long an invitation link works.
pub const TOKEN_TTL_SECONDS: i64 = 72 * 3600;

/// Who issued a link (`user_invitations.issued_by_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// A user of the tenant (a MANAGER inviting a colleague).
    User,
    /// A platform admin creating a tenant with its first MANAGER.
    PlatformAdmin,
    /// Two platform admins restoring a tenant's administration.
    BreakGlass,
    /// An operator at the console (`kasho admin invitation-link`).
    Console,
}

impl Issuer {
    pub const fn as_str(self) -> &'static str {
        match self {
            Issuer::User => "user",
            Issuer::PlatformAdmin => "platform_admin",
            Issuer::BreakGlass => "break_glass",
            Issuer::Console => "console",
        }
    }
}

/// Digest under which an invitation token is stored and looked up.
fn token_digest(token: &str) -> String {
    sha256_hex(format!("kasho-invitation/v1\u{0}{token}").as_bytes())
}

/// The link: the token is in the fragment, which browsers never send to a server, so it stays
/// out of access logs and `Referer` headers.
pub fn link(core: &Core, token: &str) -> String {
    format!(
        "{}/accept-invitation#token={token}",
        core.settings.mail.public_url
    )
}

fn email_body(link: &str, tenant_name: &str, roles: &[Role]) -> String {
    let roles = roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "You have been invited to {tenant_name} on Kasho (roles: {roles}).\n\
         \n\
         To choose your password and activate your account, open this link within 72 hours:\n\
         \n\
         {link}\n\
         \n\
         The link works once. If you did not expect this invitation, ignore this email: nothing\n\
         happens until the link is used.\n"
    )
}

/// A fresh link for `user`: the token (to mail or show once) and the row storing its digest.
fn new_link(
    core: &Core,
    tenant: &TenantId,
    user: &UserId,
    issuer: Issuer,
    issued_by: Option<&str>,
) -> AppResult<(SecretString, NewInvitation)> {
    let token = random_token().map_err(|_| AppError::internal("no randomness"))?;
    let now = core.clock.now();
    let row = NewInvitation {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.clone(),
        user_id: user.clone(),
        token_hash: token_digest(&token),
        issued_by_type: issuer.as_str(),
        issued_by: issued_by.map(str::to_owned),
        created_at: now,
        expires_at: now.plus_seconds(TOKEN_TTL_SECONDS),
        actor: None,
    };
    Ok((SecretString::from(token), row))
}

/// The email carrying `token`'s link to `to` (login `user`), sealed for the tenant's outbox
/// (under the login's own key for a customer's login).
async fn message(
    core: &Core,
    tenant: &TenantId,
    tenant_name: &str,
    user: &UserId,
    to: &str,
    roles: &[Role],
    token: &SecretString,
) -> AppResult<NewOutboxMessage> {
    let body = email_body(&link(core, token.expose_secret()), tenant_name, roles);
    mail::outbox_message(
        core,
        tenant,
        &super::users::mail_owner(user.as_str(), roles),
        "invitation",
        to,
        &format!("You are invited to {tenant_name} on Kasho"),
        &body,
    )
    .await
}

/// A password hash nobody knows: the Argon2 hash of 256 random bits, thrown away. A sign-in
/// attempt against an invited user costs what it costs against anyone and never succeeds.
pub async fn unknown_password_hash(core: &Core) -> AppResult<String> {
    let secret =
        SecretString::from(random_token().map_err(|_| AppError::internal("no randomness"))?);
    core.hasher.hash(&secret).await.map_err(AppError::internal)
}

/// The name the emails give the tenant.
async fn tenant_name(core: &Core, tenant: &TenantId) -> AppResult<String> {
    Ok(core
        .store
        .get_tenant(tenant)
        .await?
        .map_or_else(|| "your organisation".to_owned(), |t| t.name))
}

/// Everything that invites a new user of an existing tenant: the user (status `invited`), its
/// first link and the email.
pub async fn prepare(
    core: &Core,
    tenant: &TenantId,
    email: Email,
    roles: Vec<Role>,
    issuer: Issuer,
    issued_by: Option<&str>,
) -> AppResult<NewInvite> {
    let id = UserId::generate();
    let (token, invitation) = new_link(core, tenant, &id, issuer, issued_by)?;
    let name = tenant_name(core, tenant).await?;
    let message = message(core, tenant, &name, &id, email.as_str(), &roles, &token).await?;
    let (stored, email_hash) =
        super::users::stored_email(core, Some(tenant), &id, &email, &roles).await?;
    let user = NewUser {
        id,
        tenant_id: Some(tenant.clone()),
        email: stored,
        email_hash,
        password_hash: unknown_password_hash(core).await?,
        roles,
        created_at: core.clock.now(),
    };
    Ok(NewInvite {
        user,
        invitation,
        message,
    })
}

/// Mails `user` (still invited) a new link, invalidating its older ones, with `audit`.
/// `Ok(false)`: the user is no longer invited. With `actor`, the issuing user is re-checked in
/// the transaction that stores the link.
pub async fn send(
    core: &Core,
    tenant: &TenantId,
    user: &UserRecord,
    issuer: Issuer,
    issued_by: Option<&str>,
    actor: Option<&Principal>,
    audit: &[NewAuditEvent],
) -> AppResult<bool> {
    let id = UserId::from_trusted(user.id.clone());
    let (token, mut invitation) = new_link(core, tenant, &id, issuer, issued_by)?;
    invitation.actor = actor.map(Principal::actor_check);
    let name = tenant_name(core, tenant).await?;
    let roles = roles_from_storage(&user.roles);
    let to = super::users::email_of(core, user).await?;
    let message = message(core, tenant, &name, &id, &to, &roles, &token).await?;
    Ok(core
        .store
        .reissue_invitation(&invitation, Some(&message), audit)
        .await?)
}

fn not_invited() -> AppError {
    AppError::Conflict {
        code: "user_not_invited",
        param: None,
        message: "this user has already accepted its invitation (or is disabled); a person who \
                  lost their password asks for a reset"
            .into(),
    }
}

/// `POST /v1/users/{id}/reinvite`: a new link for a user who has not accepted yet (the older
/// links stop working). Like inviting, it needs step-up when the user holds a staff role.
pub async fn reinvite(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<UserRecord> {
    let tenant = actor.tenant()?;
    let uid = UserId::parse(id).ok_or(AppError::NotFound("user"))?;
    if actor.scope(Permission::UsersWrite)? == Scope::Own && uid != actor.user_id {
        return Err(AppError::NotFound("user"));
    }
    let user = core
        .store
        .get_user(Some(tenant), &uid)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    let roles = roles_from_storage(&user.roles);
    super::users::check_grantable(actor, &roles)?;
    if user.status != "invited" {
        return Err(not_invited());
    }
    if roles.iter().any(|r| r.is_staff()) {
        security::require_step_up(core, meta, actor).await?;
    }
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "user.reinvite",
        Some(("user", &user.id)),
        Outcome::Success,
        None,
    );
    if !send(
        core,
        tenant,
        &user,
        Issuer::User,
        Some(actor.user_id.as_str()),
        Some(actor),
        &[ev],
    )
    .await?
    {
        return Err(not_invited());
    }
    let user = core
        .store
        .get_user(Some(tenant), &UserId::from_trusted(user.id))
        .await?
        .ok_or(AppError::NotFound("user"))?;
    super::users::opened(core, user).await
}

pub struct Accept {
    pub token: SecretString,
    pub password: SecretString,
}

/// What accepting answers: who can now sign in, and where.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub user: UserRecord,
    /// The tenant's slug (what sign-in asks for).
    pub tenant_slug: String,
}

fn invalid_token() -> AppError {
    AppError::Invalid {
        code: "invitation_invalid",
        param: Some("token".into()),
        message: "this invitation link is invalid, has expired, was replaced by a newer one or \
                  was already used; ask for a new invitation"
            .into(),
    }
}

/// `POST /v1/invitations/accept`: sets the invited user's first password (the tenant's
/// password policy applies) and activates it, spending the link.
pub async fn accept(core: &Core, meta: &RequestMeta, input: Accept) -> AppResult<Accepted> {
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, None);
    let failed = |tenant: Option<&TenantId>, reason: &str, target: Option<&str>| {
        security::event(
            &audit,
            tenant,
            SecurityEvent::TokenRejected,
            "invitation.accept",
            target.map(|id| ("user", id)),
            Outcome::Failure,
            Some(reason),
        )
    };
    let Some(row) = core
        .store
        .invitation_by_hash(&token_digest(input.token.expose_secret()))
        .await?
    else {
        security::record(core, failed(None, "unknown_token", None)).await;
        return Err(invalid_token());
    };
    let tenant = TenantId::from_trusted(row.tenant_id.clone());
    let reason = super::password_reset::spent_reason(
        row.accepted_at,
        row.invalidated_at,
        row.expires_at,
        now,
    );
    if let Some(reason) = reason {
        security::record(core, failed(Some(&tenant), reason, Some(&row.user_id))).await;
        return Err(invalid_token());
    }
    let user_id = UserId::from_trusted(row.user_id.clone());
    let user = core.store.get_user(Some(&tenant), &user_id).await?;
    let tenant_record = core
        .store
        .get_tenant(&tenant)
        .await?
        .filter(|t| t.status == "active");
    let (user, tenant_record) = match (user, tenant_record) {
        (Some(u), Some(t)) if u.status == "invited" => (u, t),
        _ => {
            security::record(
                core,
                failed(Some(&tenant), "account_unavailable", Some(&row.user_id)),
            )
            .await;
            return Err(invalid_token());
        }
    };
    // The password first: a refused one leaves the link usable.
    let email = super::users::email_of(core, &user).await?;
    let subject = passwords::Subject {
        tenant: Some(&tenant),
        email: &email,
        user: None,
    };
    passwords::check_new_password(core, &subject, &input.password).await?;
    let hash = core
        .hasher
        .hash(&input.password)
        .await
        .map_err(AppError::internal)?;
    let done = NewAuditEvent {
        actor_type: ActorType::User,
        actor_id: Some(user.id.clone()),
        ..audit.event(
            Some(&tenant),
            "invitation.accept",
            Some(("user", &user.id)),
            Outcome::Success,
            Some(row.issued_by_type.as_str()),
        )
    };
    let acceptance = Acceptance {
        invitation_id: &row.id,
        tenant: &tenant,
        user: &user_id,
        password_hash: hash,
        now,
    };
    if !core.store.accept_invitation(&acceptance, &[done]).await? {
        // Spent by a concurrent acceptance, or replaced, between the check and the change.
        security::record(core, failed(Some(&tenant), "already_used", Some(&user.id))).await;
        return Err(invalid_token());
    }
    let user = core
        .store
        .get_user(Some(&tenant), &user_id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    let user = super::users::opened(core, user).await?;
    Ok(Accepted {
        user,
        tenant_slug: tenant_record.slug,
    })
}

/// What `kasho admin invitation-link` printed: the link, shown once.
pub struct ConsoleLink {
    pub link: SecretString,
    pub user_id: String,
    pub expires_at: Timestamp,
}

/// `kasho admin invitation-link --tenant SLUG EMAIL`: when mail cannot reach someone, a fresh
/// link for an invited user, shown at the console (console access only: no API route does
/// this). Earlier links stop working; the issue is audited in the tenant's chain and raises an
/// `invitation_link_issued` security event.
pub async fn console_link(core: &Core, slug: &str, email: &str) -> AppResult<ConsoleLink> {
    let tenant = core
        .store
        .get_tenant_by_slug(slug)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    let tenant_id = TenantId::from_trusted(tenant.id);
    let email = Email::parse(email).map_err(|m| AppError::invalid("email", m))?;
    let user = super::users::find_by_email(core, Some(&tenant_id), &email)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    if user.status != "invited" {
        return Err(not_invited());
    }
    let id = UserId::from_trusted(user.id.clone());
    let (token, invitation) = new_link(core, &tenant_id, &id, Issuer::Console, None)?;
    let meta = RequestMeta::default();
    let ev = NewAuditEvent {
        actor_type: ActorType::System,
        ..security::event(
            &AuditBuilder::new(core, &meta, None),
            Some(&tenant_id),
            SecurityEvent::InvitationLinkIssued,
            "user.invitation_link.issue",
            Some(("user", &user.id)),
            Outcome::Success,
            Some("console"),
        )
    };
    let kind = ev.security_event;
    if !core
        .store
        .reissue_invitation(&invitation, None, std::slice::from_ref(&ev))
        .await?
    {
        return Err(not_invited());
    }
    if let Some(kind) = kind {
        tracing::warn!(
            security_event = kind.as_str(),
            tenant_id = %tenant_id,
            user_id = %user.id,
            "an invitation link was issued at the console"
        );
    }
    Ok(ConsoleLink {
        link: SecretString::from(link(core, token.expose_secret())),
        user_id: user.id,
        expires_at: invitation.expires_at,
    })
}
