//! Sign-in, token refresh, logout, and turning an access token into a [`Principal`].
//!
//! - Login costs one Argon2id verification whatever happens (unknown tenant, unknown email,
//!   wrong password), and all three get the same `invalid_credentials` answer.
//! - Refresh tokens are single use: each refresh spends the presented token atomically and
//!   issues a new one in the same session. Presenting a spent token revokes the whole session
//!   (every token descended from that login) and records a security event.
//! - Every access token names its session (`sid`); each request checks the session is live, so
//!   logout and revocation take effect at once on this instance and within a second on every
//!   other (the session cache, `service::session_cache`, remembers a live session for a few
//!   seconds at most and is told of every change).

use secrecy::{ExposeSecret, SecretString};

use super::{AuditBuilder, Core, Credential, Principal, RequestMeta, guesses, security};
use crate::clock::Timestamp;
use crate::crypto::jwt::{AccessClaims, TokenError};
use crate::crypto::{random_token, sha256_hex};
use crate::domain::audit::Outcome;
use crate::domain::authz::{PermissionSet, Role, roles_from_storage};
use crate::domain::security::SecurityEvent;
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::{SessionId, TenantId, TokenId, UserId};
use crate::store::{ConsumeOutcome, NewRefreshToken, NewSession, SessionView};

/// A session's `last_used_at` (what its idle timeout counts from) is written at most this often.
pub const SESSION_TOUCH_INTERVAL_SECONDS: i64 = 60;

/// What a successful login or refresh returns. `Debug` shows neither token (issue 13 item 17:
/// an access token is a bearer credential for its lifetime).
pub struct TokenPair {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: SecretString,
    pub refresh_expires_in: i64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &"[REDACTED]")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &"[REDACTED]")
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish()
    }
}

pub struct LoginInput {
    /// The tenant's slug; `None` for platform admins.
    pub tenant: Option<String>,
    pub email: String,
    pub password: SecretString,
    /// The connection presented a client certificate the configured client CA verified
    /// (needed by a platform sign-in with `platform_admin_client_cert`).
    pub client_certificate: bool,
}

/// Errors that carry their own audit record already written.
pub struct Audited(pub AppError);

/// What a sign-in with a correct password leads to.
#[derive(Debug)]
pub enum LoginResult {
    /// Signed in.
    Tokens(TokenPair),
    /// The user has MFA: `POST /v1/auth/mfa` with this token and a code finishes the sign-in.
    MfaRequired {
        mfa_token: SecretString,
        expires_in: i64,
    },
}

pub async fn login(
    core: &Core,
    meta: &RequestMeta,
    input: LoginInput,
) -> Result<LoginResult, Audited> {
    let audit = AuditBuilder::new(core, meta, None);

    // A platform sign-in (no tenant named) needs the verified client certificate before
    // anything is looked up or counted: without it nobody may guess at platform accounts, nor
    // lock them. (The authorisation middleware refuses it earlier; this is the rule itself.)
    if input.tenant.is_none()
        && core.settings.platform_admin_client_cert
        && !input.client_certificate
    {
        let ev = security::event(
            &audit,
            None,
            SecurityEvent::AuthorizationRefused,
            "auth.login",
            None,
            Outcome::Denied,
            Some("client_certificate_required"),
        );
        security::record(core, ev).await;
        return Err(Audited(AppError::Forbidden {
            code: "client_certificate_required",
            message: "platform administration requires a TLS client certificate issued by the configured client CA".into(),
        }));
    }

    // Resolve who this could be without revealing anything: every path verifies one hash.
    let tenant = match &input.tenant {
        Some(slug) => core
            .store
            .get_tenant_by_slug(slug)
            .await
            .map_err(|e| Audited(e.into()))?,
        None => None,
    };
    let tenant_known = input.tenant.is_none() || tenant.is_some();
    let tenant_id = tenant
        .as_ref()
        .map(|t| TenantId::from_trusted(t.id.clone()));
    let policy = security::policy(core, tenant_id.as_ref())
        .await
        .map_err(Audited)?;
    let fail = |reason: &'static str, target: Option<&str>| {
        security::event(
            &audit,
            tenant_id.as_ref(),
            SecurityEvent::LoginFailed,
            "auth.login",
            target.map(|id| ("user", id)),
            Outcome::Failure,
            Some(reason),
        )
    };

    // The guess is counted before the password is checked: under the email typed in its scope
    // (known or not) and under the address. A tenant that does not exist is no scope: such a
    // guess counts against the address alone, never against an account of another scope.
    let mut slots = Vec::with_capacity(2);
    if tenant_known {
        let key = security::account_key(core, tenant_id.as_ref(), &input.email);
        slots.push(guesses::account_slot(key, &policy));
    }
    slots.extend(guesses::address_slot(core, meta));
    let guess = match guesses::reserve(core, meta, tenant_id.as_ref(), slots).await {
        Ok(g) => g,
        Err(e) => {
            security::record(core, fail(e.code(), None)).await;
            return Err(Audited(e));
        }
    };

    let user = match (tenant_known, Email::parse(&input.email)) {
        (true, Ok(email)) => super::users::find_by_email(core, tenant_id.as_ref(), &email)
            .await
            .map_err(Audited)?,
        _ => None,
    };
    let password_ok = super::passwords::verify(
        core,
        &input.password,
        user.as_ref().map(|u| u.password_hash.as_str()),
    )
    .await;

    let user = match user {
        Some(u) if password_ok => u,
        other => {
            // The reason is for auditors only; the caller always sees `invalid_credentials`,
            // after the same work: the guess stays counted, one audit record.
            let (reason, target) = match (&other, tenant_known) {
                (_, false) => ("unknown_tenant", None),
                (None, true) => ("unknown_account", None),
                (Some(u), true) => ("wrong_password", Some(u.id.as_str())),
            };
            guess.failed(core, meta, fail(reason, target)).await;
            return Err(Audited(AppError::InvalidCredentials));
        }
    };
    // The password was right: a refusal from here on is not a failed guess.
    let user_id = user.id.as_str();
    let refuse = |guess: guesses::Guess, reason: &'static str, err: AppError| async move {
        if let Err(e) = guess.refund(core).await {
            return Audited(e);
        }
        security::record(core, fail(reason, Some(user_id))).await;
        Audited(err)
    };
    if user.status != "active" {
        return Err(refuse(
            guess,
            "account_disabled",
            AppError::AccountUnavailable {
                code: "account_disabled",
                message: "this account is disabled".into(),
            },
        )
        .await);
    }
    if tenant.as_ref().is_some_and(|t| t.status != "active") {
        return Err(refuse(
            guess,
            "tenant_suspended",
            AppError::AccountUnavailable {
                code: "tenant_suspended",
                message: "this tenant is suspended".into(),
            },
        )
        .await);
    }
    // A platform login must be a platform admin, a tenant login a tenant user: the store's
    // scoping already guarantees it; this guards against a corrupted row.
    let roles = roles_from_storage(&user.roles);
    if roles.is_empty() || roles.iter().any(|r| r.is_platform()) != tenant_id.is_none() {
        return Err(refuse(guess, "invalid_roles", AppError::InvalidCredentials).await);
    }
    // Staff may be confined to the tenant's allow-list (here, on every request and at refresh).
    let ip = meta.ip.as_deref().and_then(|i| i.parse().ok());
    if !policy.admits_address(&roles, ip.as_ref()) {
        guess.refund(core).await.map_err(Audited)?;
        let ev = security::event(
            &audit,
            tenant_id.as_ref(),
            SecurityEvent::IpRefused,
            "auth.login",
            Some(("user", &user.id)),
            Outcome::Denied,
            Some("ip_not_allowed"),
        );
        security::record(core, ev).await;
        return Err(Audited(AppError::Forbidden {
            code: "ip_not_allowed",
            message: "sign-in is not allowed from this address".into(),
        }));
    }
    // With MFA the run of failures ends only once the second factor is proven too (wrong
    // codes count under the same key, so a known password must not reset them): the password
    // gives its guess back, and the code will take one.
    if user.mfa_enabled != 0 {
        guess.refund(core).await.map_err(Audited)?;
        return super::mfa::begin_challenge(core, meta, &user, tenant_id.as_ref()).await;
    }
    // The password was right: the run of failures ends.
    guess.succeeded(core).await.map_err(Audited)?;
    let pair = issue_session(core, meta, &user, tenant_id.as_ref(), &policy, "password")
        .await
        .map_err(Audited)?;
    Ok(LoginResult::Tokens(pair))
}

/// Opens a session for a user whose every factor has been verified, and answers its tokens.
/// `method` (`password`, `password+totp`, …) is recorded on the `auth.login` success record.
pub async fn issue_session(
    core: &Core,
    meta: &RequestMeta,
    user: &crate::store::UserRecord,
    tenant_id: Option<&TenantId>,
    policy: &crate::domain::security::SecurityPolicy,
    method: &str,
) -> AppResult<TokenPair> {
    let audit = AuditBuilder::new(core, meta, None);
    let now = core.clock.now();
    let roles = roles_from_storage(&user.roles);
    let session_id = SessionId::generate();
    let lifetime = i64::from(policy.session_absolute_lifetime_seconds)
        .min(core.settings.refresh_token_ttl_seconds);
    let session_expires = now.plus_seconds(lifetime);
    let (refresh, refresh_row) = new_refresh(&session_id, tenant_id, now, session_expires)?;
    let user_id = UserId::from_trusted(user.id.clone());
    // A customer's device facts are sealed under its key (issue 14).
    let (ip, user_agent) = super::privacy::session_device_facts(
        core,
        meta,
        tenant_id,
        &user_id,
        &roles,
        session_id.as_str(),
    )
    .await?;
    let session = NewSession {
        id: session_id.clone(),
        tenant_id: tenant_id.cloned(),
        user_id,
        created_at: now,
        expires_at: session_expires,
        ip,
        user_agent,
    };
    let ev = audit.event(
        tenant_id,
        "auth.login",
        Some(("user", &user.id)),
        Outcome::Success,
        Some(method),
    );
    let ev = crate::domain::audit::NewAuditEvent {
        actor_type: crate::domain::audit::ActorType::User,
        actor_id: Some(user.id.clone()),
        ..ev
    };
    core.store
        .create_session(&session, &refresh_row, &[ev])
        .await?;

    let ttl = match tenant_id {
        Some(t) => core
            .store
            .get_tenant(t)
            .await?
            .and_then(|t| t.access_token_ttl_seconds),
        None => None,
    }
    .unwrap_or(core.settings.access_token_ttl_seconds);
    let access = sign_access(core, &user.id, tenant_id, &session_id, &roles, ttl)?;
    Ok(TokenPair {
        access_token: access,
        expires_in: ttl,
        refresh_token: refresh,
        refresh_expires_in: now.seconds_until(session_expires),
    })
}

pub async fn refresh(
    core: &Core,
    meta: &RequestMeta,
    token: &SecretString,
) -> Result<TokenPair, Audited> {
    let audit = AuditBuilder::new(core, meta, None);
    let now = core.clock.now();
    let hash = sha256_hex(token.expose_secret().as_bytes());
    let invalid = || {
        Audited(AppError::InvalidToken(
            "the refresh token is invalid or expired",
        ))
    };

    // The allow-list is checked before the token is spent: a refusal leaves it to its owner
    // (spending it here would make the owner's next refresh look like a replay).
    if let Some(sid) = core
        .store
        .refresh_token_session(&hash)
        .await
        .map_err(|e| Audited(e.into()))?
        .and_then(|s| SessionId::parse(&s))
        && let Some(view) = core
            .store
            .get_session(&sid)
            .await
            .map_err(|e| Audited(e.into()))?
    {
        let policy = security::policy_from(core, view.policy.as_deref());
        refuse_unadmitted_address(core, meta, &view, &policy, &roles_from_storage(&view.roles))
            .await
            .map_err(Audited)?;
    }

    let (session_id, token_expires) = match core
        .store
        .consume_refresh_token(&hash, now)
        .await
        .map_err(|e| Audited(e.into()))?
    {
        ConsumeOutcome::Consumed {
            session_id,
            expires_at,
        } => (session_id, expires_at),
        ConsumeOutcome::Unknown => {
            super::audit::record(
                core,
                &audit.event(
                    None,
                    "auth.refresh",
                    None,
                    Outcome::Failure,
                    Some("unknown_refresh_token"),
                ),
            )
            .await;
            return Err(invalid());
        }
        ConsumeOutcome::AlreadyUsed {
            session_id,
            tenant_id,
        } => {
            let sid = SessionId::from_trusted(session_id);
            let tenant = tenant_id.map(TenantId::from_trusted);
            let ev = security::event(
                &audit,
                tenant.as_ref(),
                SecurityEvent::RefreshTokenReused,
                "security.refresh_token_reused",
                Some(("session", sid.as_str())),
                Outcome::Denied,
                Some("refresh_token_reused"),
            );
            tracing::warn!(
                security_event = "refresh_token_reused",
                session_id = %sid,
                tenant_id = tenant.as_ref().map(|t| t.to_string()),
                "a spent refresh token was presented again; the session is revoked"
            );
            let revoked = core
                .store
                .revoke_session(&sid, "refresh_token_reused", now, &[ev])
                .await;
            core.session_cache.forget_all();
            revoked.map_err(|e| Audited(e.into()))?;
            return Err(Audited(AppError::RefreshTokenReused));
        }
    };

    let sid = SessionId::from_trusted(session_id);
    let view = core
        .store
        .get_session(&sid)
        .await
        .map_err(|e| Audited(e.into()))?;
    let tenant_id = view
        .as_ref()
        .and_then(|v| v.tenant_id.clone())
        .map(TenantId::from_trusted);
    let reason = match &view {
        None => Some("unknown_session"),
        Some(_) if token_expires <= now.as_micros() => Some("refresh_token_expired"),
        Some(v) => session_problem(v, &security::policy_from(core, v.policy.as_deref()), now),
    };
    let Some(view) = view.filter(|_| reason.is_none()) else {
        super::audit::record(
            core,
            &audit.event(
                tenant_id.as_ref(),
                "auth.refresh",
                Some(("session", sid.as_str())),
                Outcome::Failure,
                reason,
            ),
        )
        .await;
        return Err(invalid());
    };

    let session_expires = crate::clock::Timestamp::from_micros(view.expires_at);
    let (refresh, row) =
        new_refresh(&sid, tenant_id.as_ref(), now, session_expires).map_err(Audited)?;
    let ev = crate::domain::audit::NewAuditEvent {
        actor_type: crate::domain::audit::ActorType::User,
        actor_id: Some(view.user_id.clone()),
        ..audit.event(
            tenant_id.as_ref(),
            "auth.refresh",
            Some(("session", sid.as_str())),
            Outcome::Success,
            None,
        )
    };
    core.store
        .add_refresh_token(&row, &[ev])
        .await
        .map_err(|e| Audited(e.into()))?;
    // A refresh is use of the session (the idle timeout restarts).
    core.store
        .touch_session(&sid, now, 0, meta.ip.as_deref())
        .await
        .map_err(|e| Audited(e.into()))?;

    let roles = roles_from_storage(&view.roles);
    let ttl = view
        .access_token_ttl_seconds
        .unwrap_or(core.settings.access_token_ttl_seconds);
    let access =
        sign_access(core, &view.user_id, tenant_id.as_ref(), &sid, &roles, ttl).map_err(Audited)?;
    Ok(TokenPair {
        access_token: access,
        expires_in: ttl,
        refresh_token: refresh,
        refresh_expires_in: now.seconds_until(session_expires),
    })
}

/// Ends the caller's session: its access tokens stop working on the next request and its
/// refresh token is dead.
pub async fn logout(core: &Core, meta: &RequestMeta, principal: &Principal) -> AppResult<()> {
    let session = principal.require_session()?;
    let audit = AuditBuilder::new(core, meta, Some(principal));
    let ev = audit.own(
        "auth.logout",
        Some(("session", session.as_str())),
        Outcome::Success,
        None,
    );
    let revoked = core
        .store
        .revoke_session(session, "logout", core.clock.now(), &[ev])
        .await;
    core.session_cache.forget_all();
    revoked?;
    Ok(())
}

/// Verifies an access token and the liveness of its session, user and tenant.
///
/// A refused token is audited as `auth.token_rejected`: on the token's tenant chain when its
/// signature was genuine (the session had ended), on the platform chain otherwise.
pub async fn authenticate(core: &Core, meta: &RequestMeta, token: &str) -> AppResult<Principal> {
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, None);
    let claims = match core
        .session_cache
        .claims(token, now, || core.tokens.verify(token, now))
    {
        Ok(c) => c,
        Err(e) => {
            let (err, reason) = match e {
                TokenError::Expired => (AppError::TokenExpired, "token_expired"),
                TokenError::Invalid => (
                    AppError::InvalidToken("the access token is invalid"),
                    "invalid_token",
                ),
            };
            let ev = security::event(
                &audit,
                None,
                SecurityEvent::TokenRejected,
                "auth.token_rejected",
                None,
                Outcome::Failure,
                Some(reason),
            );
            security::record(core, ev).await;
            return Err(err);
        }
    };
    let sid = SessionId::parse(&claims.sid)
        .ok_or(AppError::InvalidToken("the access token is invalid"))?;
    // A session checked recently is admitted from the cache when its cached view admits this
    // request; anything it would refuse is decided below on a fresh read (issue 15).
    if let Some(entry) = core.session_cache.session(sid.as_str()) {
        let v = &entry.view;
        let roles = roles_from_storage(&v.roles);
        let ip = meta.ip.as_deref().and_then(|i| i.parse().ok());
        if v.user_id == claims.sub
            && v.tenant_id == claims.tid
            && session_problem(v, &entry.policy, now).is_none()
            && entry.policy.admits_address(&roles, ip.as_ref())
        {
            core.session_cache.count(true);
            return admit(core, meta, sid, &entry.view, entry.policy, roles, now, None).await;
        }
        core.session_cache.forget_session(sid.as_str());
    }
    core.session_cache.count(false);
    let ticket = core.session_cache.ticket();
    let view = core.store.get_session(&sid).await?;
    let policy = security::policy_from(core, view.as_ref().and_then(|v| v.policy.as_deref()));
    let problem = match &view {
        None => Some("unknown_session"),
        Some(v) if v.user_id != claims.sub || v.tenant_id != claims.tid => Some("session_mismatch"),
        Some(v) => session_problem(v, &policy, now),
    };
    let Some(view) = view.filter(|_| problem.is_none()) else {
        let tenant = claims.tid.clone().map(TenantId::from_trusted);
        let ev = crate::domain::audit::NewAuditEvent {
            actor_type: crate::domain::audit::ActorType::User,
            actor_id: Some(claims.sub.clone()),
            ..security::event(
                &audit,
                tenant.as_ref(),
                SecurityEvent::TokenRejected,
                "auth.token_rejected",
                Some(("session", sid.as_str())),
                Outcome::Failure,
                problem,
            )
        };
        security::record(core, ev).await;
        return Err(AppError::InvalidToken(
            "the session has ended; sign in again",
        ));
    };
    let roles = roles_from_storage(&view.roles);
    // Staff confined to the tenant's allow-list are confined on every request, not only at
    // sign-in: a token taken from an allowed address is refused from any other.
    refuse_unadmitted_address(core, meta, &view, &policy, &roles).await?;
    admit(
        core,
        meta,
        sid,
        &view,
        std::sync::Arc::new(policy),
        roles,
        now,
        Some(ticket),
    )
    .await
}

/// The principal of an admitted session, after recording its activity. With `ticket` (the
/// view was just read), the view is remembered unless this request wrote the session.
#[allow(clippy::too_many_arguments)]
async fn admit(
    core: &Core,
    meta: &RequestMeta,
    sid: SessionId,
    view: &SessionView,
    policy: std::sync::Arc<crate::domain::security::SecurityPolicy>,
    roles: Vec<Role>,
    now: Timestamp,
    ticket: Option<crate::service::session_cache::Ticket>,
) -> AppResult<Principal> {
    // Activity restarts the idle timeout. It is written at most once a minute per session, and
    // the decision is taken here on the row just read (or remembered): even a statement that
    // changes nothing takes SQLite's database-wide write lock, so a conditional UPDATE per
    // request queued every authenticated request behind the ledger writer (SQLite single
    // transfers fell from about 5,100/s to 800/s; docs/PERFORMANCE.md). The statement keeps
    // its own condition for concurrent requests.
    // A new address is written at once (the allow-list judges sessions by their last one).
    let touched_recently = view.last_used_at.is_some_and(|t| {
        Timestamp::from_micros(t).plus_seconds(SESSION_TOUCH_INTERVAL_SECONDS) > now
    });
    // A customer's address is compared and written as a keyed hash (issue 14).
    let tenant = view.tenant_id.clone().map(TenantId::from_trusted);
    let address =
        super::privacy::session_address(core, tenant.as_ref(), &roles, meta.ip.as_deref()).await?;
    let moved = address.is_some() && address != view.last_ip;
    if !touched_recently || moved {
        // The remembered `last_used_at` and address are now older than the row's: read again.
        core.session_cache.forget_session(sid.as_str());
        if let Err(e) = core
            .store
            .touch_session(
                &sid,
                now,
                SESSION_TOUCH_INTERVAL_SECONDS,
                address.as_deref(),
            )
            .await
        {
            tracing::warn!(error = %e, "could not record session activity");
        }
    } else if let Some(ticket) = ticket {
        core.session_cache
            .put_session(ticket, view.clone(), policy.clone());
    }
    Ok(Principal {
        user_id: UserId::from_trusted(view.user_id.clone()),
        tenant_id: view.tenant_id.clone().map(TenantId::from_trusted),
        credential: Credential::Session(sid),
        permissions: PermissionSet::for_roles(&roles),
        mfa_enrolment_required: policy.mfa_required_for(&roles) && view.mfa_enabled == 0,
        policy,
        authenticated_at: Some(Timestamp::from_micros(
            view.authenticated_at.unwrap_or(view.created_at),
        )),
        roles,
    })
}

/// Refuses (403 `ip_not_allowed`, an `ip_refused` security event) a session used from an
/// address its tenant's staff allow-list does not admit, for the roles the list covers.
async fn refuse_unadmitted_address(
    core: &Core,
    meta: &RequestMeta,
    view: &SessionView,
    policy: &crate::domain::security::SecurityPolicy,
    roles: &[Role],
) -> AppResult<()> {
    let ip = meta.ip.as_deref().and_then(|i| i.parse().ok());
    if policy.admits_address(roles, ip.as_ref()) {
        return Ok(());
    }
    let tenant = view.tenant_id.clone().map(TenantId::from_trusted);
    let ev = crate::domain::audit::NewAuditEvent {
        actor_type: crate::domain::audit::ActorType::User,
        actor_id: Some(view.user_id.clone()),
        ..security::event(
            &AuditBuilder::new(core, meta, None),
            tenant.as_ref(),
            SecurityEvent::IpRefused,
            "security.ip_refused",
            Some(("session", view.session_id.as_str())),
            Outcome::Denied,
            Some("staff_allow_list"),
        )
    };
    security::record(core, ev).await;
    Err(AppError::Forbidden {
        code: "ip_not_allowed",
        message: "this session may not be used from this address (the tenant's staff allow-list)"
            .into(),
    })
}

/// Why a session may not be used now, if it may not: revoked, past its absolute lifetime,
/// idle too long (the tenant's policy), or its user or tenant no longer active.
fn session_problem(
    v: &SessionView,
    policy: &crate::domain::security::SecurityPolicy,
    now: Timestamp,
) -> Option<&'static str> {
    let created = Timestamp::from_micros(v.created_at);
    let last_used = Timestamp::from_micros(v.last_used_at.unwrap_or(v.created_at));
    if v.revoked_at.is_some() {
        Some("session_revoked")
    } else if v.expires_at <= now.as_micros()
        || created.plus_seconds(i64::from(policy.session_absolute_lifetime_seconds)) <= now
    {
        Some("session_expired")
    } else if last_used.plus_seconds(i64::from(policy.session_idle_timeout_seconds)) <= now {
        Some("session_idle")
    } else if v.user_status != "active" {
        Some("account_disabled")
    } else if v.tenant_id.is_some() && v.tenant_status.as_deref() != Some("active") {
        Some("tenant_suspended")
    } else {
        None
    }
}

fn new_refresh(
    session: &SessionId,
    tenant: Option<&TenantId>,
    now: crate::clock::Timestamp,
    expires: crate::clock::Timestamp,
) -> AppResult<(SecretString, NewRefreshToken)> {
    let token = random_token().map_err(AppError::internal)?;
    let row = NewRefreshToken {
        token_hash: sha256_hex(token.as_bytes()),
        session_id: session.clone(),
        tenant_id: tenant.cloned(),
        created_at: now,
        expires_at: expires,
    };
    Ok((SecretString::from(token), row))
}

fn sign_access(
    core: &Core,
    user_id: &str,
    tenant: Option<&TenantId>,
    session: &SessionId,
    roles: &[Role],
    ttl: i64,
) -> AppResult<String> {
    let now = core.clock.now().unix_seconds();
    let claims = AccessClaims {
        iss: core.tokens.issuer().to_owned(),
        aud: core.tokens.audience().to_owned(),
        sub: user_id.to_owned(),
        tid: tenant.map(|t| t.to_string()),
        sid: session.to_string(),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        iat: now,
        nbf: now,
        exp: now + ttl,
        jti: TokenId::generate().to_string(),
    };
    core.tokens.sign(&claims).map_err(AppError::internal)
}
