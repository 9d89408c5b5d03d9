//! Password reset by email.
//!
//! - [`request`] answers the same way whether or not the account exists: for an active user of
//!   an active tenant it stores a reset token (256 random bits; only its SHA-256 digest is
//!   kept; valid 30 minutes; single use) and the email carrying the link, in one transaction
//!   that also invalidates the user's older live tokens. Every path does the same work up to
//!   the write (a token is generated, digested and the message composed and sealed also for an
//!   unknown email) and writes one audit record (`password_reset_requested`, whose reason says,
//!   for auditors only, what happened). At most [`MAX_LINKS_PER_WINDOW`] links per user per
//!   [`LINK_WINDOW_SECONDS`] are sent, so the endpoint cannot flood a mailbox.
//! - [`confirm`] spends a live token in the transaction that sets the new password (checked
//!   against the tenant's policy and history first, so a refused password leaves the token
//!   usable), revokes every session of the user and clears the account's sign-in lock. A user
//!   with MFA must also give a TOTP or recovery code: a reset never bypasses the second factor.

use secrecy::{ExposeSecret, SecretString};

use super::{AuditBuilder, Core, RequestMeta, mail, passwords, security};
use crate::clock::Timestamp;
use crate::crypto::{random_token, sha256_hex};
use crate::domain::audit::Outcome;
use crate::domain::authz::roles_from_storage;
use crate::domain::security::SecurityEvent;
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::store::mail::{NewPasswordReset, ResetLimit};

/// How long a reset link works.
pub const TOKEN_TTL_SECONDS: i64 = 30 * 60;
/// Reset links sent to one user per window; further requests answer the same and send nothing.
pub const MAX_LINKS_PER_WINDOW: i64 = 3;
pub const LINK_WINDOW_SECONDS: i64 = 15 * 60;

pub struct ResetRequest {
    /// The tenant's slug.
    pub tenant: String,
    pub email: String,
}

pub struct ResetConfirm {
    pub token: SecretString,
    pub new_password: SecretString,
    /// A TOTP or recovery code, required when the user has MFA.
    pub code: Option<String>,
}

/// Digest under which a reset token is stored and looked up.
fn token_digest(token: &str) -> String {
    sha256_hex(format!("kasho-password-reset/v1\u{0}{token}").as_bytes())
}

fn link(core: &Core, token: &str) -> String {
    // In the fragment: never sent to a server, so not in access logs or Referer headers.
    format!(
        "{}/reset-password#token={token}",
        core.settings.mail.public_url
    )
}

fn email_body(link: &str) -> String {
    format!(
        "Someone (hopefully you) asked to reset the password of your Kasho account.\n\
         \n\
         To choose a new password, open this link within 30 minutes:\n\
         \n\
         {link}\n\
         \n\
         The link works once. If you did not ask for this, ignore this email: your password\n\
         stays as it is. Resetting your password signs you out everywhere.\n"
    )
}

/// Starts a reset. Always `Ok(())` for a well-formed request, whatever the account's state.
pub async fn request(core: &Core, meta: &RequestMeta, input: ResetRequest) -> AppResult<()> {
    let email = Email::parse(&input.email).map_err(|e| AppError::Invalid {
        code: "parameter_invalid",
        param: Some("email".into()),
        message: e,
    })?;
    let now = core.clock.now();
    let tenant = core.store.get_tenant_by_slug(&input.tenant).await?;
    let tenant_id = tenant
        .as_ref()
        .map(|t| TenantId::from_trusted(t.id.clone()));
    let user = match &tenant_id {
        Some(t) => super::users::find_by_email(core, Some(t), &email).await?,
        None => None,
    };

    // The same work on every path: a token, its digest and a sealed message.
    let token = random_token().map_err(|_| AppError::internal("no randomness"))?;
    let digest = token_digest(&token);
    let body = email_body(&link(core, &token));
    // An unknown tenant has no data key; its message is composed but not sealed.
    let message = match &tenant_id {
        Some(t) => Some(
            mail::outbox_message(
                core,
                t,
                // A customer's login: under its own key, which its erasure destroys.
                &user
                    .as_ref()
                    .map_or(crate::service::keys::KeyOwner::Tenant, |u| {
                        super::users::mail_owner(&u.id, &roles_from_storage(&u.roles))
                    }),
                "password_reset",
                email.as_str(),
                "Reset your Kasho password",
                &body,
            )
            .await?,
        ),
        None => None,
    };

    let audit = AuditBuilder::new(core, meta, None);
    let requested = |reason: &str, target: Option<&str>| {
        security::event(
            &audit,
            tenant_id.as_ref(),
            SecurityEvent::PasswordResetRequested,
            "auth.password_reset.request",
            target.map(|id| ("user", id)),
            Outcome::Success,
            Some(reason),
        )
    };
    let refusal = match (&tenant, &user) {
        (None, _) => Some("unknown_tenant"),
        (Some(_), None) => Some("unknown_account"),
        (Some(t), Some(_)) if t.status != "active" => Some("tenant_suspended"),
        (Some(_), Some(u)) if u.status != "active" => Some("account_disabled"),
        _ => None,
    };
    match (refusal, &tenant_id, user, message) {
        (None, Some(t), Some(u), Some(message)) => {
            let row = NewPasswordReset {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: t.to_string(),
                user_id: u.id.clone(),
                token_hash: digest,
                created_at: now,
                expires_at: now.plus_seconds(TOKEN_TTL_SECONDS),
            };
            let limit = ResetLimit {
                since: now.plus_seconds(-LINK_WINDOW_SECONDS),
                max: MAX_LINKS_PER_WINDOW,
            };
            core.store
                .queue_password_reset(
                    &row,
                    &message,
                    limit,
                    &[requested("queued", Some(&u.id))],
                    &[requested("rate_limited", Some(&u.id))],
                )
                .await?;
        }
        (reason, _, user, _) => {
            let target = user.as_ref().map(|u| u.id.as_str());
            security::record(core, requested(reason.unwrap_or("unknown_account"), target)).await;
        }
    }
    Ok(())
}

fn invalid_token() -> AppError {
    AppError::Invalid {
        code: "reset_token_invalid",
        param: Some("token".into()),
        message: "this reset link is invalid, has expired or was already used; request a new one"
            .into(),
    }
}

/// Finishes a reset: sets the new password, ends every session, clears the sign-in lock.
pub async fn confirm(core: &Core, meta: &RequestMeta, input: ResetConfirm) -> AppResult<()> {
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, None);
    let failed = |tenant: Option<&TenantId>, reason: &str, target: Option<&str>| {
        security::event(
            &audit,
            tenant,
            SecurityEvent::PasswordResetFailed,
            "auth.password_reset.confirm",
            target.map(|id| ("user", id)),
            Outcome::Failure,
            Some(reason),
        )
    };
    let row = core
        .store
        .password_reset_by_hash(&token_digest(input.token.expose_secret()))
        .await?;
    let Some(row) = row else {
        security::record(core, failed(None, "unknown_token", None)).await;
        return Err(invalid_token());
    };
    let tenant = TenantId::from_trusted(row.tenant_id.clone());
    let reason = spent_reason(row.used_at, row.invalidated_at, row.expires_at, now);
    if let Some(reason) = reason {
        security::record(core, failed(Some(&tenant), reason, Some(&row.user_id))).await;
        return Err(invalid_token());
    }
    let user_id = UserId::from_trusted(row.user_id.clone());
    let user = core.store.get_user(Some(&tenant), &user_id).await?;
    let tenant_active = core
        .store
        .get_tenant(&tenant)
        .await?
        .is_some_and(|t| t.status == "active");
    let user = match user {
        Some(u) if u.status == "active" && tenant_active => u,
        _ => {
            security::record(
                core,
                failed(Some(&tenant), "account_unavailable", Some(&row.user_id)),
            )
            .await;
            return Err(invalid_token());
        }
    };

    // The new password first: a refused one leaves the token (and any MFA code) unspent.
    let email = super::users::email_of(core, &user).await?;
    let subject = passwords::Subject {
        tenant: Some(&tenant),
        email: &email,
        user: Some(&user),
    };
    let policy = passwords::check_new_password(core, &subject, &input.new_password)
        .await
        .map_err(|e| passwords::for_param(e, "new_password"))?;

    let account_key = security::account_key(core, Some(&tenant), &email);
    let mut guess = None;
    if user.mfa_enabled != 0 {
        let Some(code) = input.code.as_deref().filter(|c| !c.trim().is_empty()) else {
            return Err(AppError::Invalid {
                code: "mfa_code_required",
                param: Some("code".into()),
                message: "this account uses MFA: give a current TOTP code (or a recovery code)"
                    .into(),
            });
        };
        // Codes count towards the account's lock like passwords, before they are checked.
        let g = super::guesses::reserve(
            core,
            meta,
            Some(&tenant),
            vec![super::guesses::account_slot(account_key.clone(), &policy)],
        )
        .await?;
        if !super::mfa::verify_second_factor(core, meta, Some(&tenant), &user_id, code).await? {
            let ev = failed(Some(&tenant), "wrong_mfa_code", Some(&user.id));
            g.failed(core, meta, ev).await;
            return Err(AppError::Invalid {
                code: "mfa_code_invalid",
                param: Some("code".into()),
                message: "the MFA code is wrong or was already used".into(),
            });
        }
        guess = Some(g);
    }

    let done = audit.event(
        Some(&tenant),
        "auth.password_reset.confirm",
        Some(("user", &user.id)),
        Outcome::Success,
        None,
    );
    let changed = passwords::set_password_spending_reset(
        core,
        Some(&tenant),
        &user,
        &input.new_password,
        &policy,
        &row.id,
        &[done],
    )
    .await?;
    if !changed {
        // Spent by a concurrent confirmation (or expired) between the check and the change.
        if let Some(g) = guess {
            g.refund(core).await?;
        }
        security::record(core, failed(Some(&tenant), "already_used", Some(&user.id))).await;
        return Err(invalid_token());
    }
    // Whoever locked the account out by guessing, its owner is back in.
    super::guesses::clear(core, &account_key, &[]).await?;
    Ok(())
}

/// Why a single-use emailed token (a reset or an invitation) can no longer be used, if it
/// cannot: used, replaced by a newer one, or expired.
pub(crate) fn spent_reason(
    used_at: Option<i64>,
    invalidated_at: Option<i64>,
    expires_at: i64,
    now: Timestamp,
) -> Option<&'static str> {
    if used_at.is_some() {
        Some("already_used")
    } else if invalidated_at.is_some() {
        Some("superseded")
    } else if Timestamp::from_micros(expires_at) <= now {
        Some("expired")
    } else {
        None
    }
}
