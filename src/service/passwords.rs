//! Setting a password: the tenant's policy (length, strength, history) checked in one place,
//! and the change written with its history and session revocation in one transaction. Used by
//! user creation, `POST /v1/me/password` and password reset.

use secrecy::{ExposeSecret, SecretString};

use super::{Core, security};
use crate::domain::audit::NewAuditEvent;
use crate::domain::security::SecurityPolicy;
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

/// Checks `password` against the subject's tenant policy. The error names the rule broken.
pub async fn check_new_password(
    core: &Core,
    subject: &Subject<'_>,
    password: &SecretString,
) -> AppResult<SecurityPolicy> {
    let policy = security::policy(core, subject.tenant).await?;
    let n = password.expose_secret().chars().count();
    let (min, max) = (policy.password_min_length, policy.password_max_length);
    if n < min as usize {
        return Err(refused(
            "password_too_short",
            format!("must be at least {min} characters long"),
        ));
    }
    if n > max as usize {
        return Err(refused(
            "password_too_long",
            format!("must be at most {max} characters long"),
        ));
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

/// Hashes and stores a new password for an existing user (its old hash joins the history) and
/// revokes the user's sessions but `keep_session`, with `audit`, in one transaction.
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
    Ok(core.store.set_user_password(&change, audit).await?)
}
