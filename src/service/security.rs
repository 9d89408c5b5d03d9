//! Account security shared by every credential: the tenant's policy, typed security events,
//! step-up (recent authentication) for sensitive actions, sign-in throttling and lockout, and
//! the sessions a user can see and end.
//!
//! Throttling is keyed by what the caller typed, never by whether an account exists: failures
//! are counted under `acct:<sha256(tenant, email)>` for known and unknown emails alike, so a
//! lock, a delay or a refusal looks the same either way. A second key, `ip:<address>`, counts
//! failures from one address across accounts (password spraying).

use secrecy::SecretString;

use super::{AuditBuilder, Core, Listed, Principal, RequestMeta};
use crate::clock::Timestamp;
use crate::crypto::sha256_hex;
use crate::domain::audit::{AuditRecord, NewAuditEvent, Outcome};
use crate::domain::security::{SecurityEvent, SecurityPolicy};
use crate::error::{AppError, AppResult};
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::Page;
use crate::store::security::{FailureRule, SecurityEventFilter, SessionRecord, ThrottleRecord};

/// The policy of `tenant` (the platform's, from configuration, for `None`).
pub async fn policy(core: &Core, tenant: Option<&TenantId>) -> AppResult<SecurityPolicy> {
    let stored = match tenant {
        Some(t) => core.store.security_policy(t).await?,
        None => None,
    };
    Ok(policy_from(core, stored.as_deref()))
}

/// A policy from its stored document (`None`: the configured default).
pub fn policy_from(core: &Core, stored: Option<&str>) -> SecurityPolicy {
    SecurityPolicy::from_storage(stored, &core.settings.default_policy)
}

/// Replaces a tenant's policy after checking its bounds (needs step-up).
pub async fn set_policy(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    policy: SecurityPolicy,
) -> AppResult<SecurityPolicy> {
    let tenant = actor.tenant()?;
    policy.validate().map_err(|e| AppError::Invalid {
        code: "policy_out_of_bounds",
        param: Some(e.param.to_owned()),
        message: e.message,
    })?;
    require_step_up(core, meta, actor).await?;
    let json = serde_json::to_string(&policy).map_err(AppError::internal)?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "security.policy.update",
        Some(("tenant", tenant.as_str())),
        Outcome::Success,
        None,
    );
    core.store
        .put_security_policy(
            tenant,
            &json,
            actor.user_id.as_str(),
            core.clock.now(),
            &[ev],
        )
        .await?;
    Ok(policy)
}

/// A security event record (outcome `denied` for refusals, `failure` for failed proofs).
pub fn event(
    audit: &AuditBuilder<'_>,
    tenant: Option<&TenantId>,
    kind: SecurityEvent,
    action: &str,
    target: Option<(&str, &str)>,
    outcome: Outcome,
    reason: Option<&str>,
) -> NewAuditEvent {
    audit
        .event(tenant, action, target, outcome, reason)
        .security(kind)
}

/// Writes a security event outside any business transaction, and logs it at `warn`.
pub async fn record(core: &Core, ev: NewAuditEvent) {
    if let Some(kind) = ev.security_event {
        tracing::warn!(
            security_event = kind.as_str(),
            severity = kind.severity().as_str(),
            action = %ev.action,
            tenant_id = ev.tenant_id.as_ref().map(|t| t.to_string()),
            reason = ev.reason.as_deref(),
            "security event"
        );
    }
    super::auth::record(core, &ev).await;
}

/// Refuses a sensitive action unless the caller's session proved its password (or second
/// factor) within the tenant's step-up window. API tokens never pass: they cannot step up.
pub async fn require_step_up(core: &Core, meta: &RequestMeta, actor: &Principal) -> AppResult<()> {
    let policy = &actor.policy;
    let now = core.clock.now();
    let fresh = actor
        .authenticated_at
        .is_some_and(|at| at.plus_seconds(i64::from(policy.step_up_max_age_seconds)) >= now);
    if fresh {
        return Ok(());
    }
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let reason = if actor.session_id().is_some() {
        "authentication_too_old"
    } else {
        "api_token_cannot_step_up"
    };
    record(
        core,
        event(
            &audit,
            actor.tenant_id.as_ref(),
            SecurityEvent::StepUpRequired,
            "security.step_up_required",
            None,
            Outcome::Denied,
            Some(reason),
        ),
    )
    .await;
    if actor.session_id().is_some() {
        Err(AppError::StepUpRequired)
    } else {
        Err(AppError::StepUpImpossible)
    }
}

/// What a successful step-up answers.
#[derive(Debug, Clone)]
pub struct SteppedUp {
    pub authenticated_at: Timestamp,
    /// Until when sensitive actions are allowed without another step-up.
    pub valid_until: Timestamp,
}

/// Re-authenticates the caller's session with its password (and, when the user has MFA, a
/// code). Failures count towards the account's lockout like sign-in failures.
pub async fn step_up(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    password: &SecretString,
    code: Option<&str>,
) -> AppResult<SteppedUp> {
    let session = actor.require_session()?.clone();
    let now = core.clock.now();
    let tenant = actor.tenant_id.as_ref();
    let policy = policy(core, tenant).await?;
    let user = core
        .store
        .get_user(tenant, &actor.user_id)
        .await?
        .ok_or(AppError::InvalidCredentials)?;
    let key = account_key(tenant, &user.email);
    let audit = AuditBuilder::new(core, meta, Some(actor));
    check_throttle(core, std::slice::from_ref(&key), now).await?;

    let password_ok = core
        .hasher
        .verify(password, Some(&user.password_hash))
        .await;
    let second_ok = if !password_ok {
        false
    } else if user.mfa_enabled != 0 {
        match code {
            Some(c) => {
                super::mfa::verify_second_factor(core, meta, tenant, &actor.user_id, c).await?
            }
            None => {
                return Err(AppError::Invalid {
                    code: "mfa_code_required",
                    param: Some("code".into()),
                    message: "your account uses MFA: give a current TOTP code (or a recovery code)"
                        .into(),
                });
            }
        }
    } else {
        true
    };
    if !second_ok {
        let reason = if password_ok {
            "wrong_mfa_code"
        } else {
            "wrong_password"
        };
        let ev = event(
            &audit,
            tenant,
            SecurityEvent::StepUpFailed,
            "auth.step_up",
            Some(("session", session.as_str())),
            Outcome::Failure,
            Some(reason),
        );
        count_failure(core, meta, tenant, &key, &policy, ev).await?;
        return Err(AppError::InvalidCredentials);
    }
    let ev = audit.own(
        "auth.step_up",
        Some(("session", session.as_str())),
        Outcome::Success,
        None,
    );
    if !core
        .store
        .set_session_authenticated(&session, now, &[ev])
        .await?
    {
        return Err(AppError::InvalidToken(
            "the session has ended; sign in again",
        ));
    }
    Ok(SteppedUp {
        authenticated_at: now,
        valid_until: now.plus_seconds(i64::from(policy.step_up_max_age_seconds)),
    })
}

// ---------------------------------------------------------------------------------------------
// Sign-in throttling and lockout.

/// The throttle key of an email in a scope (whether or not such an account exists).
pub fn account_key(tenant: Option<&TenantId>, email: &str) -> String {
    let scope = tenant.map_or("", |t| t.as_str());
    let normalised = email.trim().to_lowercase();
    format!(
        "acct:{}",
        sha256_hex(format!("{}\u{0}{normalised}", scope).as_bytes())
    )
}

/// The throttle key of a client address.
pub fn ip_key(ip: &str) -> String {
    format!("ip:{ip}")
}

/// Seconds to wait after `failures` consecutive failures: none for the first two, then 1, 2,
/// 4, … up to 30.
pub fn progressive_delay_seconds(failures: i64) -> i64 {
    if failures < 3 {
        0
    } else {
        let exp = u32::try_from(failures - 3).unwrap_or(u32::MAX).min(5);
        (1i64 << exp).min(30)
    }
}

/// Refuses an attempt under any of `keys` that is locked or still inside its progressive delay.
/// Both answers are the same whether or not the account exists.
pub async fn check_throttle(core: &Core, keys: &[String], now: Timestamp) -> AppResult<()> {
    for row in core.store.login_throttle(keys).await? {
        if let Some(until) = row.locked_until.filter(|u| *u > now.as_micros()) {
            let secs = now.seconds_until(Timestamp::from_micros(until)).max(1);
            return Err(if row.key.starts_with("ip:") {
                AppError::TooManyAttempts {
                    code: "too_many_attempts",
                    message: "too many failed sign-ins from this address; try again later".into(),
                    retry_after_seconds: secs,
                }
            } else {
                AppError::TooManyAttempts {
                    code: "account_locked",
                    message: "too many failed sign-ins: sign-in is locked for a while; try again later or ask a manager to unlock it".into(),
                    retry_after_seconds: secs,
                }
            });
        }
        if row.key.starts_with("acct:") {
            let delay = progressive_delay_seconds(row.failures);
            let ready = Timestamp::from_micros(row.last_failed_at).plus_seconds(delay);
            if ready > now {
                return Err(AppError::TooManyAttempts {
                    code: "too_many_attempts",
                    message: "too many failed sign-ins; wait before trying again".into(),
                    retry_after_seconds: now.seconds_until(ready).max(1),
                });
            }
        }
    }
    Ok(())
}

/// Counts a failed proof under the account key (with `failure`, its audit record) and, for
/// sign-ins, under the caller's address; records `account_locked` when the count locks it.
pub async fn count_failure(
    core: &Core,
    meta: &RequestMeta,
    tenant: Option<&TenantId>,
    key: &str,
    policy: &SecurityPolicy,
    failure: NewAuditEvent,
) -> AppResult<ThrottleRecord> {
    let now = core.clock.now();
    let rule = FailureRule {
        // Consecutive failures: the run ends with a success (or a day of quiet).
        window_seconds: 86_400,
        threshold: i64::from(policy.lockout_threshold),
        lock_seconds: i64::from(policy.lockout_minutes) * 60,
    };
    let target = failure.target_type.clone().zip(failure.target_id.clone());
    let (row, locked) = core
        .store
        .record_login_failure(key, tenant, rule, now, &[failure])
        .await?;
    if locked {
        let audit = AuditBuilder::new(core, meta, None);
        record(
            core,
            event(
                &audit,
                tenant,
                SecurityEvent::AccountLocked,
                "security.account_locked",
                target.as_ref().map(|(t, id)| (t.as_str(), id.as_str())),
                Outcome::Denied,
                Some("failure_threshold"),
            ),
        )
        .await;
    }
    Ok(row)
}

/// Counts a failed sign-in under the caller's address; records `login_throttled` when the
/// address reaches its budget.
pub async fn count_ip_failure(
    core: &Core,
    meta: &RequestMeta,
    tenant: Option<&TenantId>,
) -> AppResult<()> {
    let Some(ip) = meta.ip.as_deref() else {
        return Ok(());
    };
    let (_, locked) = core
        .store
        .record_login_failure(
            &ip_key(ip),
            tenant,
            core.settings.login_ip_rule,
            core.clock.now(),
            &[],
        )
        .await?;
    if locked {
        let audit = AuditBuilder::new(core, meta, None);
        record(
            core,
            event(
                &audit,
                tenant,
                SecurityEvent::LoginThrottled,
                "security.login_throttled",
                None,
                Outcome::Denied,
                Some("address_failure_budget"),
            ),
        )
        .await;
    }
    Ok(())
}

/// Lifts a lock (and forgets the failures) of a user of the caller's tenant.
pub async fn unlock_user(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<bool> {
    let tenant = actor.tenant()?;
    let id = UserId::parse(id).ok_or(AppError::NotFound("user"))?;
    let user = core
        .store
        .get_user(Some(tenant), &id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    // Unlocking gives sign-in back: only over a user one could manage, with step-up.
    require_step_up(core, meta, actor).await?;
    super::users::check_grantable(
        actor,
        &crate::domain::authz::roles_from_storage(&user.roles),
    )?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "user.unlock",
        Some(("user", id.as_str())),
        Outcome::Success,
        None,
    );
    Ok(core
        .store
        .clear_login_throttle(&account_key(Some(tenant), &user.email), &[ev])
        .await?)
}

/// Whether a user's sign-in is locked now, and until when.
pub async fn lock_state(
    core: &Core,
    tenant: Option<&TenantId>,
    email: &str,
) -> AppResult<Option<Timestamp>> {
    let now = core.clock.now().as_micros();
    Ok(core
        .store
        .login_throttle(&[account_key(tenant, email)])
        .await?
        .into_iter()
        .find_map(|r| r.locked_until.filter(|u| *u > now))
        .map(Timestamp::from_micros))
}

// ---------------------------------------------------------------------------------------------
// Sessions.

/// The caller's live sessions (newest first); the current one is marked by the caller.
pub async fn list_sessions(
    core: &Core,
    actor: &Principal,
    page: &Page,
) -> AppResult<Listed<SessionRecord>> {
    actor.require_session()?;
    let rows = core
        .store
        .list_user_sessions(
            actor.tenant_id.as_ref(),
            &actor.user_id,
            core.clock.now(),
            page,
        )
        .await?;
    Ok(Listed::from_rows(rows, page))
}

/// Ends one of the caller's sessions (its own current one included).
pub async fn revoke_session(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<()> {
    actor.require_session()?;
    let id = SessionId::parse(id).ok_or(AppError::NotFound("session"))?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "session.revoke",
        Some(("session", id.as_str())),
        Outcome::Success,
        None,
    );
    let n = core
        .store
        .revoke_user_sessions(
            actor.tenant_id.as_ref(),
            &actor.user_id,
            Some(&id),
            None,
            "revoked_by_user",
            core.clock.now(),
            &[ev],
        )
        .await?;
    if n == 0 {
        return Err(AppError::NotFound("session"));
    }
    Ok(())
}

/// Ends every session of the caller but the current one; returns how many.
pub async fn revoke_other_sessions(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
) -> AppResult<u64> {
    let current = actor.require_session()?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "session.revoke_others",
        Some(("session", current.as_str())),
        Outcome::Success,
        None,
    );
    Ok(core
        .store
        .revoke_user_sessions(
            actor.tenant_id.as_ref(),
            &actor.user_id,
            None,
            Some(current),
            "revoked_by_user",
            core.clock.now(),
            &[ev],
        )
        .await?)
}

// ---------------------------------------------------------------------------------------------
// Security events.

/// Security events of the caller's chain (tenant, or platform for platform admins).
pub async fn list_events(
    core: &Core,
    actor: &Principal,
    filter: &SecurityEventFilter,
    page: &Page,
) -> AppResult<Listed<AuditRecord>> {
    let chain = crate::domain::audit::chain_for(actor.tenant_id.as_ref());
    let rows = core
        .store
        .list_security_events(&chain, filter, page)
        .await?;
    Ok(Listed::from_rows(rows, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap() {
        let d: Vec<i64> = (0..12).map(progressive_delay_seconds).collect();
        assert_eq!(d, vec![0, 0, 0, 1, 2, 4, 8, 16, 30, 30, 30, 30]);
    }

    #[test]
    fn account_keys_do_not_depend_on_case_and_differ_by_tenant() {
        let t = TenantId::generate();
        assert_eq!(
            account_key(Some(&t), "Ada@Example.com "),
            account_key(Some(&t), "ada@example.com")
        );
        assert_ne!(
            account_key(Some(&t), "ada@example.com"),
            account_key(None, "ada@example.com")
        );
    }
}
