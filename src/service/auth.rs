//! Sign-in, token refresh, logout, and turning an access token into a [`Principal`].
//!
//! - Login costs one Argon2id verification whatever happens (unknown tenant, unknown email,
//!   wrong password), and all three get the same `invalid_credentials` answer.
//! - Refresh tokens are single use: each refresh spends the presented token atomically and
//!   issues a new one in the same session. Presenting a spent token revokes the whole session
//!   (every token descended from that login) and records a security event.
//! - Every access token names its session (`sid`); each request checks the session is live, so
//!   logout and revocation take effect at once, on every instance.

use secrecy::{ExposeSecret, SecretString};

use super::{AuditBuilder, Core, Principal, RequestMeta};
use crate::crypto::jwt::{AccessClaims, TokenError};
use crate::crypto::{random_token, sha256_hex};
use crate::domain::audit::Outcome;
use crate::domain::authz::{PermissionSet, Role, roles_from_storage};
use crate::domain::values::Email;
use crate::error::{AppError, AppResult};
use crate::ids::{SessionId, TenantId, TokenId, UserId};
use crate::store::{ConsumeOutcome, NewRefreshToken, NewSession, SessionView};

/// What a successful login or refresh returns.
#[derive(Debug)]
pub struct TokenPair {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: SecretString,
    pub refresh_expires_in: i64,
}

pub struct LoginInput {
    /// The tenant's slug; `None` for platform admins.
    pub tenant: Option<String>,
    pub email: String,
    pub password: SecretString,
}

/// Errors that carry their own audit record already written.
pub struct Audited(pub AppError);

pub async fn login(
    core: &Core,
    meta: &RequestMeta,
    input: LoginInput,
) -> Result<TokenPair, Audited> {
    let audit = AuditBuilder::new(core, meta, None);
    let now = core.clock.now();

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
    let user = match (tenant_known, Email::parse(&input.email)) {
        (true, Ok(email)) => core
            .store
            .find_user_by_email(tenant_id.as_ref(), &email)
            .await
            .map_err(|e| Audited(e.into()))?,
        _ => None,
    };
    let password_ok = core
        .hasher
        .verify(
            &input.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await;

    let fail = |reason: &'static str, target: Option<&str>| {
        audit.event(
            tenant_id.as_ref(),
            "auth.login",
            target.map(|id| ("user", id)),
            Outcome::Failure,
            Some(reason),
        )
    };
    let user = match user {
        Some(u) if password_ok => u,
        other => {
            // The reason is for auditors only; the caller always sees `invalid_credentials`.
            let (reason, target) = match (&other, tenant_known) {
                (_, false) => ("unknown_tenant", None),
                (None, true) => ("unknown_account", None),
                (Some(u), true) => ("wrong_password", Some(u.id.as_str())),
            };
            record(core, &fail(reason, target)).await;
            return Err(Audited(AppError::InvalidCredentials));
        }
    };
    if user.status != "active" {
        record(core, &fail("account_disabled", Some(&user.id))).await;
        return Err(Audited(AppError::AccountUnavailable {
            code: "account_disabled",
            message: "this account is disabled".into(),
        }));
    }
    if tenant.as_ref().is_some_and(|t| t.status != "active") {
        record(core, &fail("tenant_suspended", Some(&user.id))).await;
        return Err(Audited(AppError::AccountUnavailable {
            code: "tenant_suspended",
            message: "this tenant is suspended".into(),
        }));
    }
    // A platform login must be a platform admin, a tenant login a tenant user: the store's
    // scoping already guarantees it; this guards against a corrupted row.
    let roles = roles_from_storage(&user.roles);
    if roles.is_empty() || roles.iter().any(|r| r.is_platform()) != tenant_id.is_none() {
        record(core, &fail("invalid_roles", Some(&user.id))).await;
        return Err(Audited(AppError::InvalidCredentials));
    }

    let session_id = SessionId::generate();
    let session_expires = now.plus_seconds(core.settings.refresh_token_ttl_seconds);
    let (refresh, refresh_row) =
        new_refresh(&session_id, tenant_id.as_ref(), now, session_expires).map_err(Audited)?;
    let session = NewSession {
        id: session_id.clone(),
        tenant_id: tenant_id.clone(),
        user_id: UserId::from_trusted(user.id.clone()),
        created_at: now,
        expires_at: session_expires,
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
    };
    let ev = audit.event(
        tenant_id.as_ref(),
        "auth.login",
        Some(("user", &user.id)),
        Outcome::Success,
        None,
    );
    let ev = crate::domain::audit::NewAuditEvent {
        actor_type: crate::domain::audit::ActorType::User,
        actor_id: Some(user.id.clone()),
        ..ev
    };
    core.store
        .create_session(&session, &refresh_row, &[ev])
        .await
        .map_err(|e| Audited(e.into()))?;

    let ttl = tenant
        .as_ref()
        .and_then(|t| t.access_token_ttl_seconds)
        .unwrap_or(core.settings.access_token_ttl_seconds);
    let access = sign_access(core, &user.id, tenant_id.as_ref(), &session_id, &roles, ttl)
        .map_err(Audited)?;
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
            record(
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
            let ev = audit.event(
                tenant.as_ref(),
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
            core.store
                .revoke_session(&sid, "refresh_token_reused", now, &[ev])
                .await
                .map_err(|e| Audited(e.into()))?;
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
        Some(v) => session_problem(v, now),
    };
    let Some(view) = view.filter(|_| reason.is_none()) else {
        record(
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
    let audit = AuditBuilder::new(core, meta, Some(principal));
    let ev = audit.own(
        "auth.logout",
        Some(("session", principal.session_id.as_str())),
        Outcome::Success,
        None,
    );
    core.store
        .revoke_session(&principal.session_id, "logout", core.clock.now(), &[ev])
        .await?;
    Ok(())
}

/// Verifies an access token and the liveness of its session, user and tenant.
///
/// A refused token is audited as `auth.token_rejected`: on the token's tenant chain when its
/// signature was genuine (the session had ended), on the platform chain otherwise.
pub async fn authenticate(core: &Core, meta: &RequestMeta, token: &str) -> AppResult<Principal> {
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, None);
    let claims = match core.tokens.verify(token, now) {
        Ok(c) => c,
        Err(e) => {
            let (err, reason) = match e {
                TokenError::Expired => (AppError::TokenExpired, "token_expired"),
                TokenError::Invalid => (
                    AppError::InvalidToken("the access token is invalid"),
                    "invalid_token",
                ),
            };
            record(
                core,
                &audit.event(
                    None,
                    "auth.token_rejected",
                    None,
                    Outcome::Failure,
                    Some(reason),
                ),
            )
            .await;
            return Err(err);
        }
    };
    let sid = SessionId::parse(&claims.sid)
        .ok_or(AppError::InvalidToken("the access token is invalid"))?;
    let view = core.store.get_session(&sid).await?;
    let problem = match &view {
        None => Some("unknown_session"),
        Some(v) if v.user_id != claims.sub || v.tenant_id != claims.tid => Some("session_mismatch"),
        Some(v) => session_problem(v, now),
    };
    let Some(view) = view.filter(|_| problem.is_none()) else {
        let tenant = claims.tid.clone().map(TenantId::from_trusted);
        let ev = crate::domain::audit::NewAuditEvent {
            actor_type: crate::domain::audit::ActorType::User,
            actor_id: Some(claims.sub.clone()),
            ..audit.event(
                tenant.as_ref(),
                "auth.token_rejected",
                Some(("session", sid.as_str())),
                Outcome::Failure,
                problem,
            )
        };
        record(core, &ev).await;
        return Err(AppError::InvalidToken(
            "the session has ended; sign in again",
        ));
    };
    let roles = roles_from_storage(&view.roles);
    Ok(Principal {
        user_id: UserId::from_trusted(view.user_id),
        tenant_id: view.tenant_id.map(TenantId::from_trusted),
        session_id: sid,
        permissions: PermissionSet::for_roles(&roles),
        roles,
    })
}

/// Why a session may not be used now, if it may not.
fn session_problem(v: &SessionView, now: crate::clock::Timestamp) -> Option<&'static str> {
    if v.revoked_at.is_some() {
        Some("session_revoked")
    } else if v.expires_at <= now.as_micros() {
        Some("session_expired")
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

/// Writes an audit record outside any business transaction (failures and refusals). A failure
/// to write is logged loudly; it must not turn a refusal into a success.
pub async fn record(core: &Core, ev: &crate::domain::audit::NewAuditEvent) {
    if let Err(e) = core.store.append_audit(ev).await {
        tracing::error!(error = %e, action = %ev.action, "failed to write audit record");
    }
}
