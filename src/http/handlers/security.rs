//! Account security over HTTP: step-up, the caller's sessions, the tenant's security policy,
//! unlocking a user, and the security-event feed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Recorded;
use crate::domain::security::{SecurityEvent, SecurityPolicy, Severity};
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::state::AppState;
use crate::http::views::{AuditEventView, List, ListQuery, page, time_param, ts};
use crate::ids::{AuditEventId, SessionId};
use crate::service::{Principal, RequestMeta, security};
use crate::store::security::{SecurityEventFilter, SessionRecord};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    /// A current TOTP code (or a recovery code), required when the user has MFA.
    pub code: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StepUpView {
    /// Always `step_up`.
    pub object: &'static str,
    pub authenticated_at: String,
    /// Sensitive actions are allowed without another step-up until then.
    pub valid_until: String,
}

/// Re-authenticate the current session with the password (and a code when MFA is on), for
/// sensitive actions: changing password or MFA, creating API tokens, changing roles, the
/// security policy, and transfers above the tenant's threshold. Wrong passwords count towards
/// the account's lockout.
#[utoipa::path(post, path = "/v1/auth/step-up", operation_id = "stepUpSession", tag = "auth", security(("bearer" = [])), request_body = StepUpRequest, responses(
    (status = 200, body = StepUpView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, description = "Not a user session (API tokens cannot step up)", body = ErrorBody),
    (status = 429, description = "Too many failures (see Retry-After)", body = ErrorBody),
))]
pub async fn step_up(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<StepUpRequest>,
) -> ApiResult<Recorded<Json<StepUpView>>> {
    let done = security::step_up(
        &state.core,
        &meta,
        &principal,
        &body.password,
        body.code.as_deref(),
    )
    .await
    .map_err(|e| ApiError::from(e).audited())?;
    Ok(Recorded(
        StatusCode::OK,
        Json(StepUpView {
            object: "step_up",
            authenticated_at: done.authenticated_at.to_rfc3339(),
            valid_until: done.valid_until.to_rfc3339(),
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// Always `session`.
    pub object: &'static str,
    pub id: String,
    pub created_at: String,
    /// Last request or refresh (recorded at most once a minute).
    pub last_used_at: String,
    /// The session ends then at the latest (absolute lifetime).
    pub expires_at: String,
    /// The last password (or MFA) proof: sign-in or step-up.
    pub authenticated_at: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Whether this is the session making the request.
    pub current: bool,
}

fn session_view(r: SessionRecord, current: Option<&SessionId>) -> SessionView {
    SessionView {
        object: "session",
        current: current.is_some_and(|c| c.as_str() == r.id),
        created_at: ts(r.created_at),
        last_used_at: ts(r.last_used_at.unwrap_or(r.created_at)),
        expires_at: ts(r.expires_at),
        authenticated_at: ts(r.authenticated_at.unwrap_or(r.created_at)),
        id: r.id,
        ip: r.ip,
        user_agent: r.user_agent,
    }
}

/// The caller's live sessions, newest first, with the current one marked.
#[utoipa::path(get, path = "/v1/me/sessions", operation_id = "listSessions", tag = "sessions", security(("bearer" = [])), params(ListQuery), responses(
    (status = 200, body = List<SessionView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list_sessions(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<List<SessionView>>> {
    let page = page(q.limit, q.starting_after, |c| SessionId::parse(c).is_some())?;
    let listed = security::list_sessions(&state.core, &principal, &page).await?;
    let current = principal.session_id();
    Ok(Json(List::from(listed, |r| session_view(r, current))))
}

/// End one of the caller's sessions (the current one included): its tokens stop at once.
#[utoipa::path(delete, path = "/v1/me/sessions/{id}", operation_id = "revokeSession", tag = "sessions", security(("bearer" = [])), params(("id" = String, Path)), responses(
    (status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn revoke_session(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<()>> {
    security::revoke_session(&state.core, &meta, &principal, &id).await?;
    Ok(Recorded(StatusCode::NO_CONTENT, ()))
}

#[derive(Serialize, ToSchema)]
pub struct RevokedView {
    /// Always `revocation`.
    pub object: &'static str,
    /// How many sessions were ended.
    pub revoked: u64,
}

/// End every session of the caller except the current one.
#[utoipa::path(post, path = "/v1/me/sessions/revoke-others", operation_id = "revokeOtherSessions", tag = "sessions", security(("bearer" = [])), responses(
    (status = 200, body = RevokedView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn revoke_other_sessions(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
) -> ApiResult<Recorded<Json<RevokedView>>> {
    let revoked = security::revoke_other_sessions(&state.core, &meta, &principal).await?;
    Ok(Recorded(
        StatusCode::OK,
        Json(RevokedView {
            object: "revocation",
            revoked,
        }),
    ))
}

/// A tenant's security policy as the API shows and takes it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityPolicyBody {
    /// 8..=64 (12).
    pub password_min_length: u32,
    /// 128..=1024 (128).
    pub password_max_length: u32,
    /// A new password may not be the current one or one of this many before it, 4..=24 (4).
    pub password_history: u32,
    /// Consecutive failed sign-ins that lock sign-in, 3..=10 (10, PCI DSS 8.3.4).
    pub lockout_threshold: u32,
    /// 30..=1440 (30).
    pub lockout_minutes: u32,
    /// Roles whose holders must use MFA (MANAGER, COMPLIANCE_OFFICER by default).
    pub mfa_required_roles: Vec<String>,
    /// How recent an authentication sensitive actions need, 60..=600 seconds (600).
    pub step_up_max_age_seconds: u32,
    /// Transfers strictly above these amounts (minor units per currency) need step-up.
    pub step_up_transfer_threshold: BTreeMap<String, i64>,
    /// 300..=2592000 seconds (3600), at most the absolute lifetime.
    pub session_idle_timeout_seconds: u32,
    /// 3600..=2592000 seconds (2592000 = 30 days).
    pub session_absolute_lifetime_seconds: u32,
    /// CIDRs API-token requests (and staff sign-ins, with the next flag) must come from.
    pub allowed_ips: Vec<String>,
    /// Apply `allowed_ips` to sign-ins of every role but CUSTOMER.
    pub staff_login_ip_allowlist: bool,
    /// API-token requests must be signed (`Kasho-Signature`).
    pub require_signed_requests: bool,
    /// Browser origins allowed to call the API cross-origin (CORS), at most 20, each exactly
    /// `https://host[:port]` (`http://` only for localhost and 127.0.0.1); never `*`.
    /// Omitted: none. CORS is not authorisation: every request still needs its credential.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
    /// Pairs of roles no user may hold together (segregation of duties), each two different
    /// tenant roles; at most 15. Always includes `["MANAGER", "COMPLIANCE_OFFICER"]`, which
    /// cannot be removed. Omitted: only that pair.
    #[serde(default = "default_forbidden_role_pairs")]
    pub forbidden_role_pairs: Vec<Vec<String>>,
}

fn default_forbidden_role_pairs() -> Vec<Vec<String>> {
    crate::domain::authz::ALWAYS_FORBIDDEN_PAIRS
        .iter()
        .map(|(a, b)| vec![a.as_str().to_owned(), b.as_str().to_owned()])
        .collect()
}

impl From<SecurityPolicy> for SecurityPolicyBody {
    fn from(p: SecurityPolicy) -> Self {
        Self {
            password_min_length: p.password_min_length,
            password_max_length: p.password_max_length,
            password_history: p.password_history,
            lockout_threshold: p.lockout_threshold,
            lockout_minutes: p.lockout_minutes,
            mfa_required_roles: p
                .mfa_required_roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            step_up_max_age_seconds: p.step_up_max_age_seconds,
            step_up_transfer_threshold: p.step_up_transfer_threshold,
            session_idle_timeout_seconds: p.session_idle_timeout_seconds,
            session_absolute_lifetime_seconds: p.session_absolute_lifetime_seconds,
            allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
            staff_login_ip_allowlist: p.staff_login_ip_allowlist,
            require_signed_requests: p.require_signed_requests,
            cors_allowed_origins: p
                .cors_allowed_origins
                .iter()
                .map(ToString::to_string)
                .collect(),
            forbidden_role_pairs: p
                .forbidden_role_pairs
                .iter()
                .map(|pair| pair.iter().map(|r| r.as_str().to_owned()).collect())
                .collect(),
        }
    }
}

impl SecurityPolicyBody {
    fn into_policy(self) -> Result<SecurityPolicy, ApiError> {
        let mut roles = Vec::new();
        for r in &self.mfa_required_roles {
            let role = crate::domain::authz::Role::parse(r).ok_or_else(|| {
                ApiError::invalid(
                    "parameter_invalid",
                    Some("mfa_required_roles".into()),
                    format!("unknown role `{r}`"),
                )
            })?;
            if role.is_platform() {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    Some("mfa_required_roles".into()),
                    "PLATFORM_ADMIN is not a tenant role",
                ));
            }
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        let mut ips = Vec::new();
        for (i, c) in self.allowed_ips.iter().enumerate() {
            ips.push(c.parse().map_err(|e: String| {
                ApiError::invalid("parameter_invalid", Some(format!("allowed_ips[{i}]")), e)
            })?);
        }
        let mut origins: Vec<crate::domain::security::CorsOrigin> = Vec::new();
        for (i, o) in self.cors_allowed_origins.iter().enumerate() {
            let origin = crate::domain::security::CorsOrigin::parse(o).map_err(|e| {
                ApiError::invalid(
                    "parameter_invalid",
                    Some(format!("cors_allowed_origins[{i}]")),
                    e,
                )
            })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        let mut pairs = Vec::new();
        for (i, pair) in self.forbidden_role_pairs.iter().enumerate() {
            let param = || Some(format!("forbidden_role_pairs[{i}]"));
            let roles = pair
                .iter()
                .map(|r| crate::domain::authz::Role::parse(r))
                .collect::<Option<Vec<_>>>();
            match roles.as_deref() {
                Some([a, b]) => pairs.push([*a, *b]),
                _ => {
                    return Err(ApiError::invalid(
                        "parameter_invalid",
                        param(),
                        "each pair is two role names, e.g. [\"CASHIER\", \"AUDITOR\"]",
                    ));
                }
            }
        }
        Ok(SecurityPolicy {
            password_min_length: self.password_min_length,
            password_max_length: self.password_max_length,
            password_history: self.password_history,
            lockout_threshold: self.lockout_threshold,
            lockout_minutes: self.lockout_minutes,
            mfa_required_roles: roles,
            step_up_max_age_seconds: self.step_up_max_age_seconds,
            step_up_transfer_threshold: self.step_up_transfer_threshold,
            session_idle_timeout_seconds: self.session_idle_timeout_seconds,
            session_absolute_lifetime_seconds: self.session_absolute_lifetime_seconds,
            allowed_ips: ips,
            staff_login_ip_allowlist: self.staff_login_ip_allowlist,
            require_signed_requests: self.require_signed_requests,
            cors_allowed_origins: origins,
            forbidden_role_pairs: pairs,
        })
    }
}

/// A tenant's policy never lists the platform role (the configured default carries it for the
/// platform scope), so what GET shows can be PUT back as is.
fn render(mut policy: SecurityPolicy, principal: &Principal) -> SecurityPolicyBody {
    if principal.tenant_id.is_some() {
        policy.mfa_required_roles.retain(|r| !r.is_platform());
    }
    policy.into()
}

/// The security policy in force for the caller's tenant (the defaults until one is set).
#[utoipa::path(get, path = "/v1/security/policy", operation_id = "getSecurityPolicy", tag = "security", security(("bearer" = [])), responses(
    (status = 200, body = SecurityPolicyBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn get_policy(
    State(state): State<Arc<AppState>>,
    principal: Principal,
) -> ApiResult<Json<SecurityPolicyBody>> {
    let policy = security::policy(&state.core, principal.tenant_id.as_ref()).await?;
    Ok(Json(render(policy, &principal)))
}

/// Replace the tenant's security policy (every field; figures outside the bounds are refused
/// with the field named). Needs step-up.
#[utoipa::path(put, path = "/v1/security/policy", operation_id = "setSecurityPolicy", tag = "security", security(("bearer" = [])), request_body = SecurityPolicyBody, responses(
    (status = 200, body = SecurityPolicyBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, description = "Not permitted, or step-up required", body = ErrorBody),
))]
pub async fn put_policy(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<SecurityPolicyBody>,
) -> ApiResult<Recorded<Json<SecurityPolicyBody>>> {
    let policy = body.into_policy()?;
    let saved = security::set_policy(&state.core, &meta, &principal, policy).await?;
    Ok(Recorded(StatusCode::OK, Json(render(saved, &principal))))
}

#[derive(Serialize, ToSchema)]
pub struct UnlockView {
    /// Always `unlock`.
    pub object: &'static str,
    pub user_id: String,
    /// Whether there was anything to lift (a lock or counted failures).
    pub was_locked: bool,
}

/// Lift a user's sign-in lock and forget their failed attempts.
#[utoipa::path(post, path = "/v1/users/{id}/unlock", operation_id = "unlockUser", tag = "users", security(("bearer" = [])), params(("id" = String, Path)), responses(
    (status = 200, body = UnlockView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn unlock_user(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<UnlockView>>> {
    let was_locked = security::unlock_user(&state.core, &meta, &principal, &id).await?;
    Ok(Recorded(
        StatusCode::OK,
        Json(UnlockView {
            object: "unlock",
            user_id: id,
            was_locked,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SecurityEventQuery {
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The id of the last event of the previous page.
    pub starting_after: Option<String>,
    /// Only this type, e.g. `login_failed`, `account_locked`, `ip_refused`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only types at or above this severity: `low`, `medium` or `high`.
    pub severity: Option<String>,
    /// Only events by this actor (a user or API token id).
    pub actor_id: Option<String>,
    /// Only events from this address.
    pub ip: Option<String>,
    /// RFC 3339; only events at or after this time.
    pub occurred_after: Option<String>,
    /// RFC 3339; only events before this time.
    pub occurred_before: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SecurityEventView {
    /// Always `security_event`.
    pub object: &'static str,
    /// The event type, e.g. `login_failed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `low`, `medium` or `high`.
    pub severity: &'static str,
    /// The audit record that carries the event (same id, in the hash chain).
    pub audit_event: AuditEventView,
}

/// Security events of the caller's tenant (the platform's for platform admins), newest first:
/// failed sign-ins, lockouts, refresh-token reuse, MFA and step-up failures, refused
/// authorisations, bad signatures, replays and refused addresses.
#[utoipa::path(get, path = "/v1/security-events", operation_id = "listSecurityEvents", tag = "security", security(("bearer" = [])), params(SecurityEventQuery), responses(
    (status = 200, body = List<SecurityEventView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list_events(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<SecurityEventQuery>,
) -> ApiResult<Json<List<SecurityEventView>>> {
    let page = page(q.limit, q.starting_after, |c| {
        AuditEventId::parse(c).is_some()
    })?;
    let mut types: Vec<SecurityEvent> = SecurityEvent::ALL.to_vec();
    if let Some(k) = &q.kind {
        let kind = SecurityEvent::parse(k).ok_or_else(|| {
            ApiError::invalid(
                "parameter_invalid",
                Some("type".into()),
                format!("unknown security event type `{k}`"),
            )
        })?;
        types.retain(|t| *t == kind);
    }
    if let Some(s) = &q.severity {
        let min = Severity::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "parameter_invalid",
                Some("severity".into()),
                "severity must be low, medium or high",
            )
        })?;
        types.retain(|t| t.severity() >= min);
    }
    let filter = SecurityEventFilter {
        types: if q.kind.is_none() && q.severity.is_none() {
            Vec::new()
        } else if types.is_empty() {
            // A type below the requested severity: nothing can match.
            vec![String::new()]
        } else {
            types.iter().map(|t| t.as_str().to_owned()).collect()
        },
        actor_id: q.actor_id,
        ip: q.ip,
        occurred_after: time_param("occurred_after", q.occurred_after)?,
        occurred_before: time_param("occurred_before", q.occurred_before)?,
    };
    let listed = security::list_events(&state.core, &principal, &filter, &page).await?;
    Ok(Json(List::from(listed, |r| {
        let kind = r.security_event.clone().unwrap_or_default();
        SecurityEventView {
            object: "security_event",
            severity: SecurityEvent::parse(&kind).map_or("low", |k| k.severity().as_str()),
            kind,
            audit_event: r.into(),
        }
    })))
}
