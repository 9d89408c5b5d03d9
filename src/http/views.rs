//! Wire types: request bodies (strict: unknown fields refused) and response objects. Every
//! response object names its kind in `object`, Stripe-style.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::clock::Timestamp;
use crate::domain::audit::AuditRecord;
use crate::service::Listed;
use crate::store::{Page, TenantRecord, UserRecord};

/// A page of objects, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<T>,
    /// Whether more objects follow; pass the last id as `starting_after` to get them.
    pub has_more: bool,
}

impl<T: ToSchema> List<T> {
    pub fn from<U>(listed: Listed<U>, f: impl FnMut(U) -> T) -> Self {
        let listed = listed.map(f);
        Self {
            object: "list",
            data: listed.data,
            has_more: listed.has_more,
        }
    }
}

/// Cursor pagination parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The id of the last object of the previous page.
    pub starting_after: Option<String>,
}

/// Validates `limit` and the cursor (which must be an id of the listed type).
pub fn page(
    limit: Option<u32>,
    starting_after: Option<String>,
    id_ok: fn(&str) -> bool,
) -> Result<Page, ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "parameter_invalid",
            Some("limit".into()),
            "limit must be between 1 and 100",
        ));
    }
    if let Some(c) = &starting_after
        && !id_ok(c)
    {
        return Err(ApiError::invalid(
            "parameter_invalid",
            Some("starting_after".into()),
            "starting_after must be an id from a previous page",
        ));
    }
    Ok(Page {
        limit,
        starting_after,
    })
}

/// Parses an optional RFC 3339 query parameter, naming it on error.
pub fn time_param(name: &str, v: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|s| {
        Timestamp::parse_rfc3339(&s).ok_or_else(|| {
            ApiError::invalid(
                "parameter_invalid",
                Some(name.to_owned()),
                format!("{name} must be an RFC 3339 timestamp"),
            )
        })
    })
    .transpose()
}

pub fn ts(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}

// ---- auth ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The tenant's slug. Omit it to sign in as a platform admin.
    pub tenant: Option<String>,
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = String)]
    pub refresh_token: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// An EdDSA-signed JWT; send it as `Authorization: Bearer …` (or `X-Auth-Token`).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Opaque, single use: exchange it at `/v1/auth/refresh` for a new pair.
    pub refresh_token: String,
    /// Seconds until the session ends and a new login is needed.
    pub refresh_expires_in: i64,
}

/// The answer to a correct password when the user has MFA: finish at `POST /v1/auth/mfa`.
#[derive(Serialize, ToSchema)]
pub struct MfaChallengeView {
    /// Always `true`.
    pub mfa_required: bool,
    /// Single use, short-lived; send it with a TOTP or recovery code to `/v1/auth/mfa`.
    pub mfa_token: String,
    /// Seconds until the MFA token expires.
    pub expires_in: i64,
}

/// A sign-in's answer: tokens, or an MFA challenge.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    Tokens(TokenResponse),
    MfaRequired(MfaChallengeView),
}

#[derive(Serialize, ToSchema)]
pub struct PermissionView {
    /// e.g. `users:read`.
    pub name: &'static str,
    /// `all` (the whole tenant) or `own` (only what the caller owns).
    pub scope: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct MeView {
    /// Always `principal`.
    pub object: &'static str,
    pub user_id: String,
    /// Absent for platform admins.
    pub tenant_id: Option<String>,
    /// The session behind the request (absent for API tokens).
    pub session_id: Option<String>,
    /// The API token behind the request (absent for sessions).
    pub api_token_id: Option<String>,
    pub roles: Vec<String>,
    pub permissions: Vec<PermissionView>,
    /// When the session last proved its password (sign-in or step-up).
    pub authenticated_at: Option<String>,
    /// The user's role requires MFA and they have not enrolled: only enrolment is allowed.
    pub mfa_enrolment_required: bool,
}

// ---- tenants ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitialManager {
    /// The manager is invited at this address: it receives a link (valid 72 hours) and
    /// chooses its own password. Nobody sets another person's password.
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 3-40 of a-z, 0-9 and `-`, starting with a letter; used at login.
    pub slug: String,
    pub name: String,
    /// ISO 4217 codes the tenant may hold, e.g. `["USD", "NGN"]`.
    pub currencies: Vec<String>,
    /// The tenant's first MANAGER.
    pub manager: InitialManager,
    /// Access-token lifetime for this tenant's users, 300-86400 (default: the server's, 3600).
    pub access_token_ttl_seconds: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TenantView {
    /// Always `tenant`.
    pub object: &'static str,
    pub id: String,
    pub slug: String,
    pub name: String,
    pub currencies: Vec<String>,
    /// `active` or `suspended`.
    pub status: String,
    pub access_token_ttl_seconds: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<TenantRecord> for TenantView {
    fn from(t: TenantRecord) -> Self {
        Self {
            object: "tenant",
            currencies: t
                .currencies
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            id: t.id,
            slug: t.slug,
            name: t.name,
            status: t.status,
            access_token_ttl_seconds: t.access_token_ttl_seconds,
            created_at: ts(t.created_at),
            updated_at: ts(t.updated_at),
        }
    }
}

// ---- users ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// The user is invited at this address: it receives a link (valid 72 hours) and chooses
    /// its own password (`POST /v1/invitations/accept`). There is no password field.
    pub email: String,
    /// One or more of MANAGER, AGENT, CASHIER, COMPLIANCE_OFFICER, AUDITOR, CUSTOMER (never
    /// MANAGER with COMPLIANCE_OFFICER, nor a pair the tenant's policy forbids).
    pub roles: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitationRequest {
    /// The token from the invitation link's fragment (`#token=…`).
    #[schema(value_type = String, format = Password)]
    pub token: SecretString,
    /// The password the invited user chooses (the tenant's password policy applies).
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct InvitationAcceptedView {
    /// Always `invitation_acceptance`.
    pub object: &'static str,
    pub user_id: String,
    /// The tenant's slug: what sign-in asks for.
    pub tenant: String,
    pub email: String,
    /// `active`: the user signs in now (and enrols MFA first where its role requires it).
    pub status: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRolesRequest {
    pub roles: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    /// Always `user`.
    pub object: &'static str,
    pub id: String,
    pub tenant_id: Option<String>,
    pub email: String,
    pub roles: Vec<String>,
    /// `invited` (until it accepts its invitation), `active` or `disabled`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        Self {
            object: "user",
            roles: u
                .roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            id: u.id,
            tenant_id: u.tenant_id,
            email: u.stored_email,
            status: u.status,
            created_at: ts(u.created_at),
            updated_at: ts(u.updated_at),
        }
    }
}

// ---- break-glass ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequestBody {
    /// The new MANAGER's email: it is invited there once a second platform admin approves.
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct BreakGlassView {
    /// Always `break_glass_request`.
    pub object: &'static str,
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    /// `pending`, `approved` or `expired` (pending past `expires_at`).
    pub status: String,
    pub requested_by: String,
    pub requested_at: String,
    pub expires_at: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    /// The MANAGER invited by the approval.
    pub user_id: Option<String>,
}

impl BreakGlassView {
    pub fn new(r: crate::store::identity::BreakGlassRecord, now: Timestamp) -> Self {
        let status = if r.status == "pending" && r.expires_at <= now.as_micros() {
            "expired".to_owned()
        } else {
            r.status
        };
        Self {
            object: "break_glass_request",
            id: r.id,
            tenant_id: r.tenant_id,
            email: r.email,
            status,
            requested_by: r.requested_by,
            requested_at: ts(r.requested_at),
            expires_at: ts(r.expires_at),
            approved_by: r.approved_by,
            approved_at: r.approved_at.map(ts),
            user_id: r.user_id,
        }
    }
}

// ---- audit ----

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The id of the last event of the previous page.
    pub starting_after: Option<String>,
    /// Only events by this actor (a user id).
    pub actor_id: Option<String>,
    /// Only this action, e.g. `auth.login`.
    pub action: Option<String>,
    /// RFC 3339; only events at or after this time.
    pub occurred_after: Option<String>,
    /// RFC 3339; only events before this time.
    pub occurred_before: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEventView {
    /// Always `audit_event`.
    pub object: &'static str,
    pub id: String,
    /// Position in the tenant's hash chain, from 1.
    pub seq: i64,
    pub tenant_id: Option<String>,
    pub occurred_at: String,
    /// `user`, `api_token`, `system` or `anonymous`.
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    pub reason: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// The security event type, when this record is one (see `/v1/security-events`).
    pub security_event: Option<String>,
}

impl From<AuditRecord> for AuditEventView {
    fn from(r: AuditRecord) -> Self {
        Self {
            object: "audit_event",
            occurred_at: ts(r.occurred_at),
            id: r.id,
            seq: r.seq,
            tenant_id: r.tenant_id,
            actor_type: r.actor_type,
            actor_id: r.actor_id,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            outcome: r.outcome,
            reason: r.reason,
            ip: r.ip,
            request_id: r.request_id,
            prev_hash: r.prev_hash,
            hash: r.hash,
            security_event: r.security_event,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct HealthView {
    /// `ok`.
    pub status: &'static str,
}

/// Whether this instance can serve traffic.
#[derive(Serialize, ToSchema)]
pub struct ReadyView {
    /// `ready`, or `not_ready` (503) when a check fails.
    pub status: &'static str,
    pub checks: ReadyChecksView,
}

/// One entry per dependency.
#[derive(Serialize, ToSchema)]
pub struct ReadyChecksView {
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// `ok`, `pending` (the schema is not the one this binary embeds) or `unreachable`.
    pub migrations: &'static str,
    /// `ok`, `unreachable` or `not_configured`.
    pub redis: &'static str,
}
