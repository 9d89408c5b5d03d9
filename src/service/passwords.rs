//! Setting a password: the tenant's policy (length, strength, history) checked in one place,
//! and the change written with its history and session revocation in one transaction. Used by
//! invitation acceptance, `POST /v1/me/password` and password reset.

use secrecy::{ExposeSecret, SecretString};

use super::{AuditBuilder, Core, Principal, RequestMeta, security};
use crate::domain::audit::{NewAuditEvent, Outcome};
use crate::domain::password_policy;
use crate::domain::security::{SecurityEvent, SecurityPolicy};
use crate::error::{AppError, AppResult};
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::UserRecord;
use crate::store::security::PasswordChange;

/// Whose password is being set: what the strength check may not let it be built from, and
/// whose history it may not repeat.
pub struct Subject<'a> {
    pub tenant: Option<&'a TenantId>,
    pub email: &'a str,
    /// The existing user (for history), absent at creation.
    pub user: Option<&'a UserRecord>,
}

fn refused(code: &'static str, message: impl Into<String>) -> AppError {
    AppError::Invalid {
        code,
        param: Some("password".into()),
        message: message.into(),
    }
}

/// The same refusal naming another request field (`new_password`).
pub fn for_param(e: AppError, name: &str) -> AppError {
    match e {
        AppError::Invalid {
            code,
            param: Some(p),
            message,
        } if p == "password" => AppError::Invalid {
            code,
            param: Some(name.to_owned()),
            message,
        },
        other => other,
    }
}

/// Checks `password` against the subject's tenant policy (length, personal information,
/// the common list, zxcvbn, history). The tenant's name and slug are read from storage. The
/// error names the rule broken.
pub async fn check_new_password(
    core: &Core,
    subject: &Subject<'_>,
    password: &SecretString,
) -> AppResult<SecurityPolicy> {
    let tenant = match subject.tenant {
        Some(t) => core.store.get_tenant(t).await?,
        None => None,
    };
    let context: Vec<&str> = tenant
        .as_ref()
        .map(|t| vec![t.name.as_str(), t.slug.as_str()])
        .unwrap_or_default();
    check_new_password_with(core, subject, password, &context).await
}

/// [`check_new_password`] with the names the password may not be built from given by the
/// caller (a tenant being created is not stored yet).
pub async fn check_new_password_with(
    core: &Core,
    subject: &Subject<'_>,
    password: &SecretString,
    context: &[&str],
) -> AppResult<SecurityPolicy> {
    let policy = security::policy(core, subject.tenant).await?;
    let (min_length, max_length) = (policy.password_min_length, policy.password_max_length);
    let email = subject.email.to_owned();
    let context: Vec<String> = context.iter().map(|c| (*c).to_owned()).collect();
    let candidate = password.clone();
    // zxcvbn takes milliseconds on long inputs: off the async runtime.
    let verdict = tokio::task::spawn_blocking(move || {
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        password_policy::check(
            candidate.expose_secret(),
            &password_policy::Rules {
                min_length,
                max_length,
                email: &email,
                context: &context,
            },
        )
    })
    .await
    .map_err(AppError::internal)?;
    if let Err(weakness) = verdict {
        return Err(refused(weakness.code(), weakness.message()));
    }
    if let Some(user) = subject.user {
        let history = core
            .store
            .password_history(
                &UserId::from_trusted(user.id.clone()),
                policy.password_history,
            )
            .await?;
        // The current password and the previous ones the policy remembers.
        for hash in std::iter::once(&user.password_hash).chain(history.iter()) {
            if core.hasher.verify(password, Some(hash)).await {
                return Err(refused(
                    "password_reused",
                    format!(
                        "must not be your current password or one of your last {} passwords",
                        policy.password_history
                    ),
                ));
            }
        }
    }
    Ok(policy)
}

/// Checks a password guess against a stored hash (the dummy hash when there is no such
/// account, at the same cost), counting the check in `kasho_credential_verifications_total`.
/// The guess must have been counted first (`service::guesses::reserve`): this is the only
/// place a password guess is checked.
pub async fn verify(core: &Core, password: &SecretString, stored: Option<&str>) -> bool {
    core.verifications
        .record(crate::observability::CredentialKind::Password);
    core.hasher.verify(password, stored).await
}

/// Hashes and stores a new password for an existing user (its old hash joins the history) and
/// revokes the user's sessions but `keep_session` and every API token of the user, with
/// `audit`, in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn set_password(
    core: &Core,
    tenant: Option<&TenantId>,
    user: &UserRecord,
    password: &SecretString,
    policy: &SecurityPolicy,
    keep_session: Option<&SessionId>,
    revoke_reason: &str,
    audit: &[NewAuditEvent],
) -> AppResult<()> {
    if !store_password(
        core,
        tenant,
        user,
        password,
        policy,
        keep_session,
        revoke_reason,
        None,
        audit,
    )
    .await?
    {
        return Err(AppError::NotFound("user"));
    }
    Ok(())
}

/// [`set_password`] for a password reset: revokes every session and spends the reset token
/// `token_id` in the same transaction. `Ok(false)`: the token was no longer live (spent by a
/// concurrent reset, superseded or expired), and nothing changed.
#[allow(clippy::too_many_arguments)]
pub async fn set_password_spending_reset(
    core: &Core,
    tenant: Option<&TenantId>,
    user: &UserRecord,
    password: &SecretString,
    policy: &SecurityPolicy,
    token_id: &str,
    audit: &[NewAuditEvent],
) -> AppResult<bool> {
    store_password(
        core,
        tenant,
        user,
        password,
        policy,
        None,
        "password_reset",
        Some(token_id),
        audit,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn store_password(
    core: &Core,
    tenant: Option<&TenantId>,
    user: &UserRecord,
    password: &SecretString,
    policy: &SecurityPolicy,
    keep_session: Option<&SessionId>,
    revoke_reason: &str,
    spend_reset_token: Option<&str>,
    audit: &[NewAuditEvent],
) -> AppResult<bool> {
    let hash = core
        .hasher
        .hash(password)
        .await
        .map_err(AppError::internal)?;
    let change = PasswordChange {
        tenant,
        user: &UserId::from_trusted(user.id.clone()),
        new_hash: hash,
        keep_history: policy.password_history,
        keep_session,
        revoke_reason,
        now: core.clock.now(),
        spend_reset_token,
    };
    Ok(core
        .session_cache
        .after(core.store.set_user_password(&change, audit))
        .await?)
}

/// `POST /v1/me/password`: the signed-in user changes their password. Needs a session (not an
/// API token) that stepped up recently, and the current password: a wrong one counts towards
/// the account's lockout like a failed sign-in. The new password meets the tenant's policy;
/// the user's other sessions and all the user's API tokens end, the current session stays.
pub async fn change(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    current_password: &SecretString,
    new_password: &SecretString,
) -> AppResult<()> {
    let session = actor.require_session()?.clone();
    security::require_step_up(core, meta, actor).await?;
    let tenant = actor.tenant_id.as_ref();
    let user = core
        .store
        .get_user(tenant, &actor.user_id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    let email = super::users::email_of(core, &user).await?;
    let key = security::account_key(core, tenant, &email);
    let current_policy = security::policy(core, tenant).await?;
    let guess = super::guesses::reserve(
        core,
        meta,
        tenant,
        vec![super::guesses::account_slot(key, &current_policy)],
    )
    .await?;
    let audit = AuditBuilder::new(core, meta, Some(actor));
    if !verify(core, current_password, Some(&user.password_hash)).await {
        let ev = security::event(
            &audit,
            tenant,
            SecurityEvent::StepUpFailed,
            "user.password.change",
            Some(("user", user.id.as_str())),
            Outcome::Failure,
            Some("wrong_current_password"),
        );
        guess.failed(core, meta, ev).await;
        return Err(AppError::Invalid {
            code: "current_password_incorrect",
            param: Some("current_password".into()),
            message: "the current password is not correct".into(),
        });
    }
    guess.succeeded(core).await?;
    let subject = Subject {
        tenant,
        email: &email,
        user: Some(&user),
    };
    let policy = check_new_password(core, &subject, new_password)
        .await
        .map_err(|e| for_param(e, "new_password"))?;
    let ev = audit.own(
        "user.password.change",
        Some(("user", user.id.as_str())),
        Outcome::Success,
        None,
    );
    set_password(
        core,
        tenant,
        &user,
        new_password,
        &policy,
        Some(&session),
        "password_changed",
        &[ev],
    )
    .await
}
