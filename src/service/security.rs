//! Account security shared by every credential: the tenant's policy, typed security events,
//! step-up (recent authentication) for sensitive actions, sign-in throttling and lockout, and
//! the sessions a user can see and end.
//!
//! Throttling is keyed by what the caller typed, never by whether an account exists: guesses
//! are counted under `acct:<sha256(tenant, email)>` for known and unknown emails alike, so a
//! lock, a delay or a refusal looks the same either way. A second key, `ip:<address>`, counts
//! sign-in guesses from one address across accounts (password spraying). Guesses are counted
//! before they are checked, by `service::guesses`.

use secrecy::SecretString;

use super::{AuditBuilder, Core, Listed, Principal, RequestMeta};
use crate::clock::Timestamp;
use crate::domain::audit::{AuditRecord, NewAuditEvent, Outcome};
use crate::domain::security::{SecurityEvent, SecurityPolicy};
use crate::error::{AppError, AppResult};
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::Page;
use crate::store::security::{SecurityEventFilter, SessionRecord};

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
    // The allow-list applies to every request: a list that left out the caller's own address
    // would lock the caller out with its first answer.
    let own_ip = meta.ip.as_deref().and_then(|i| i.parse().ok());
    if !policy.admits_address(&actor.roles, own_ip.as_ref()) {
        return Err(AppError::Invalid {
            code: "allow_list_excludes_caller",
            param: Some("allowed_ips".into()),
            message: "the staff allow-list must admit the address you are calling from".into(),
        });
    }
    let json = serde_json::to_string(&policy).map_err(AppError::internal)?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "security.policy.update",
        Some(("tenant", tenant.as_str())),
        Outcome::Success,
        None,
    );
    core.session_cache
        .after(core.store.put_security_policy(
            tenant,
            &json,
            actor.user_id.as_str(),
            core.clock.now(),
            &[ev],
        ))
        .await?;
    end_sessions_outside_allow_list(core, meta, actor, tenant, &policy).await?;
    Ok(policy)
}

/// Ends the tenant's sessions that `policy`'s staff allow-list no longer admits, judged by the
/// address each was last used from (after the policy is saved: a session used meanwhile is
/// judged by the new list on its own request). Each ending is audited.
async fn end_sessions_outside_allow_list(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    tenant: &TenantId,
    policy: &SecurityPolicy,
) -> AppResult<u64> {
    if !policy.staff_login_ip_allowlist || policy.allowed_ips.is_empty() {
        return Ok(0);
    }
    let now = core.clock.now();
    let outside: Vec<String> = core
        .store
        .live_session_addresses(tenant, now)
        .await?
        .into_iter()
        .filter(|s| {
            let ip = s.last_ip.as_deref().and_then(|i| i.parse().ok());
            let roles = crate::domain::authz::roles_from_storage(&s.roles);
            !policy.admits_address(&roles, ip.as_ref())
        })
        .map(|s| s.id)
        .collect();
    if outside.is_empty() {
        return Ok(0);
    }
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let events: Vec<NewAuditEvent> = outside
        .iter()
        .map(|id| {
            audit.own(
                "session.revoke",
                Some(("session", id.as_str())),
                Outcome::Success,
                Some("ip_not_allowed"),
            )
        })
        .collect();
    Ok(core
        .session_cache
        .after(
            core.store
                .revoke_tenant_sessions(tenant, &outside, "ip_not_allowed", now, &events),
        )
        .await?)
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
    super::audit::record(core, &ev).await;
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
    let email = super::users::email_of(core, &user).await?;
    let key = account_key(core, tenant, &email);
    let audit = AuditBuilder::new(core, meta, Some(actor));
    // Counted before anything is checked; the password and, with MFA, the code are one guess.
    let guess = super::guesses::reserve(
        core,
        meta,
        tenant,
        vec![super::guesses::account_slot(key, &policy)],
    )
    .await?;

    let password_ok = super::passwords::verify(core, password, Some(&user.password_hash)).await;
    let second_ok = if !password_ok {
        false
    } else if user.mfa_enabled != 0 {
        match code {
            Some(c) => {
                super::mfa::verify_second_factor(core, meta, tenant, &actor.user_id, c).await?
            }
            None => {
                guess.refund(core).await?;
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
        guess.failed(core, meta, ev).await;
        return Err(AppError::InvalidCredentials);
    }
    guess.succeeded(core).await?;
    let ev = audit.own(
        "auth.step_up",
        Some(("session", session.as_str())),
        Outcome::Success,
        None,
    );
    if !core
        .session_cache
        .after(core.store.set_session_authenticated(&session, now, &[ev]))
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

/// The key under which sign-in throttle records name an account: HMAC-SHA256 keyed with a key
/// derived from the master key (`login-throttle/v1`), so whoever reads `login_throttle` (or the
/// shared limiter's Redis) cannot confirm a guessed tenant and email by hashing them (issue 14
/// item 11). It rotates only with the root key; rows keyed under an old key are forgotten.
pub struct ThrottleKey(zeroize::Zeroizing<[u8; 32]>);

impl ThrottleKey {
    /// The derivation label of the key under the master key.
    pub const PURPOSE: &'static str = "login-throttle/v1";

    pub fn new(key: [u8; 32]) -> Self {
        Self(zeroize::Zeroizing::new(key))
    }

    /// The throttle key of an email in a scope (whether or not such an account exists).
    pub fn account(&self, tenant: Option<&TenantId>, email: &str) -> String {
        let scope = tenant.map_or("", |t| t.as_str());
        let normalised = email.trim().to_lowercase();
        format!(
            "acct:{}",
            hex::encode(crate::crypto::hmac_sha256(
                self.0.as_slice(),
                format!("{scope}\u{0}{normalised}").as_bytes()
            ))
        )
    }
}

impl std::fmt::Debug for ThrottleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThrottleKey(<redacted>)")
    }
}

/// The key under which a login's email is looked up and kept unique in its tenant
/// (`users.email_hash`): HMAC-SHA256 keyed with a key derived from the master key
/// (`login-email/v1`) over the tenant id and the normalised email. A customer's login keeps
/// nothing else readable without its own data key (the email itself is sealed under
/// `login:<user id>`, which the customer's erasure destroys), so whoever reads `users` cannot
/// confirm a guessed address by hashing it. It rotates only with the root key.
pub struct LoginEmailKey(zeroize::Zeroizing<[u8; 32]>);

impl LoginEmailKey {
    /// The derivation label of the key under the master key.
    pub const PURPOSE: &'static str = "login-email/v1";

    pub fn new(key: [u8; 32]) -> Self {
        Self(zeroize::Zeroizing::new(key))
    }

    /// The lookup hash of an email in a scope (`le1.<hex>`).
    pub fn hash(&self, tenant: Option<&TenantId>, email: &str) -> String {
        let scope = tenant.map_or("", |t| t.as_str());
        let normalised = email.trim().to_lowercase();
        format!(
            "le1.{}",
            hex::encode(crate::crypto::hmac_sha256(
                self.0.as_slice(),
                format!("{scope}\u{0}{normalised}").as_bytes()
            ))
        )
    }
}

impl std::fmt::Debug for LoginEmailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginEmailKey(<redacted>)")
    }
}

/// The throttle key of an email in a scope (whether or not such an account exists).
pub fn account_key(core: &Core, tenant: Option<&TenantId>, email: &str) -> String {
    core.throttle_key.account(tenant, email)
}

/// The throttle key of a client address.
pub fn ip_key(ip: &str) -> String {
    format!("ip:{ip}")
}

pub use crate::domain::security::progressive_delay_seconds;

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
    let email = super::users::email_of(core, &user).await?;
    super::guesses::clear(core, &account_key(core, Some(tenant), &email), &[ev]).await
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
        .login_throttle(&[account_key(core, tenant, email)])
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
    let mut listed = Listed::from_rows(rows, page);
    // A customer's sessions keep their device facts sealed under its key (issue 14).
    for s in &mut listed.data {
        let tenant = s.tenant_id.clone();
        s.ip = super::privacy::open_session_fact(
            core,
            tenant.as_deref(),
            &s.id,
            crate::store::keys::SESSION_IP,
            s.ip.take(),
        )
        .await?;
        s.user_agent = super::privacy::open_session_fact(
            core,
            tenant.as_deref(),
            &s.id,
            crate::store::keys::SESSION_USER_AGENT,
            s.user_agent.take(),
        )
        .await?;
    }
    Ok(listed)
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
        .session_cache
        .after(core.store.revoke_user_sessions(
            actor.tenant_id.as_ref(),
            &actor.user_id,
            Some(&id),
            None,
            "revoked_by_user",
            core.clock.now(),
            &[ev],
        ))
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
        .session_cache
        .after(core.store.revoke_user_sessions(
            actor.tenant_id.as_ref(),
            &actor.user_id,
            None,
            Some(current),
            "revoked_by_user",
            core.clock.now(),
            &[ev],
        ))
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
    fn account_keys_do_not_depend_on_case_and_differ_by_tenant_and_key() {
        let t = TenantId::generate();
        let k = ThrottleKey::new([7; 32]);
        assert_eq!(
            k.account(Some(&t), "Ada@Example.com "),
            k.account(Some(&t), "ada@example.com")
        );
        assert_ne!(
            k.account(Some(&t), "ada@example.com"),
            k.account(None, "ada@example.com")
        );
        // Keyed: the plain hash of tenant and email (what anyone could compute) is not it.
        let unkeyed = format!(
            "acct:{}",
            crate::crypto::sha256_hex(format!("{}\u{0}ada@example.com", t.as_str()).as_bytes())
        );
        assert_ne!(k.account(Some(&t), "ada@example.com"), unkeyed);
        assert_ne!(
            k.account(Some(&t), "ada@example.com"),
            ThrottleKey::new([8; 32]).account(Some(&t), "ada@example.com")
        );
        assert!(!format!("{k:?}").contains('7'));
    }
}
