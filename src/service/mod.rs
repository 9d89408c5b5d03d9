//! Use cases. Each function takes the [`Core`] (storage, clock, hasher, token keys), the
//! caller's [`Principal`] where there is one, and the request's [`RequestMeta`] for the audit
//! trail, and returns domain results or an [`AppError`](crate::error::AppError). Nothing here
//! knows about HTTP.

pub mod alerts;
pub mod api_tokens;
pub mod audit;
pub mod auth;
pub mod break_glass;
pub mod budgets;
pub mod customers;
pub mod duties;
pub mod guesses;
pub mod health;
pub mod intrusion;
pub mod invitations;
pub mod key_proof;
pub mod keys;
pub mod kyc;
pub mod ledger;
pub mod mail;
pub mod mfa;
pub mod password_reset;
pub mod passwords;
pub mod privacy;
pub mod ratelimit;
pub mod retention;
pub mod security;
pub mod session_cache;
pub mod staff_notes;
pub mod tenants;
pub mod users;

use std::sync::Arc;

use crate::clock::Clock;
use crate::crypto::jwt::TokenKeys;
use crate::crypto::password::PasswordHasher;
use crate::domain::audit::{ActorType, AuditSealer, NewAuditEvent, Outcome};
use crate::domain::authz::{Permission, PermissionSet, Role, Scope};
use crate::error::{AppError, AppResult};
use crate::ids::{SessionId, TenantId, UserId};
use crate::store::{Page, Store};

/// Session and token settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub access_token_ttl_seconds: i64,
    pub refresh_token_ttl_seconds: i64,
    /// How long an idempotency key and its response are kept.
    pub idempotency_ttl_seconds: i64,
    /// Retention periods enforced by `retention::run_once`.
    pub retention: crate::domain::processing::RetentionPolicy,
    /// The policy of tenants that never set one, and of the platform scope.
    pub default_policy: crate::domain::security::SecurityPolicy,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<crate::domain::security::Cidr>,
    /// Failed sign-ins from one address across accounts.
    pub login_ip_rule: crate::store::security::FailureRule,
    /// Outgoing mail: SMTP relay or mailbox folder, sender, public URL for links.
    pub mail: mail::MailSettings,
    /// How long a rotated API token's previous secret keeps working when the rotation names
    /// no overlap.
    pub api_token_rotation_overlap_seconds: i64,
    /// Responses carry `Strict-Transport-Security` (served over TLS, or behind a TLS proxy in
    /// production).
    pub hsts: bool,
    /// Platform admins (and platform sign-ins) must come over a connection that presented a
    /// client certificate the configured client CA verified.
    pub platform_admin_client_cert: bool,
    /// Rate limits and intrusion bans.
    pub limits: crate::config::ratelimit::LimitSettings,
    /// Security alerts: severity threshold, webhook and its signing secrets.
    pub alerts: crate::config::alerts::AlertSettings,
    /// The bearer token `GET /metrics` on the main listener requires; `None`: not served there.
    pub metrics_token: Option<secrecy::SecretString>,
    /// A request unanswered after this long is cut off (408 or 503, see `http::timeout`).
    pub request_timeout_seconds: u64,
    /// The largest request head (HTTP/1) or header list (HTTP/2), `max_header_bytes`.
    pub max_header_bytes: usize,
}

/// Everything the use cases need, shared by all requests.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub hasher: PasswordHasher,
    pub tokens: TokenKeys,
    pub sealer: AuditSealer,
    pub settings: Settings,
    /// The single writer of money movements.
    pub ledger: ledger::LedgerWriter,
    /// Idempotency keys being processed in this process.
    pub inflight: ledger::InFlight,
    /// Credentials whose budget (refused movements, searches) is spent (the count is in the
    /// store).
    pub budgets: budgets::BudgetGate,
    /// The key hierarchy: seals and opens data at rest.
    pub keyring: Arc<keys::Keyring>,
    /// KYC limits cache (the limits a movement carries to the ledger core).
    pub kyc: kyc::KycGate,
    /// The key API-token secrets are hashed under (derived from the master key).
    pub api_token_key: api_tokens::TokenHashKey,
    /// Keys the sign-in throttle's account records (`login_throttle`, the shared limiter).
    pub throttle_key: security::ThrottleKey,
    /// Keys `users.email_hash` (lookup and uniqueness of logins' emails).
    pub login_email_key: security::LoginEmailKey,
    /// Rate-limit buckets and intrusion bans (in Redis when configured).
    pub limits: ratelimit::RateLimiter,
    /// The alert webhook client (`None`: alerts are only logged).
    pub alert_webhook: Option<alerts::WebhookClient>,
    /// Passwords and codes this core checked (`kasho_credential_verifications_total`).
    pub verifications: crate::observability::Verifications,
    /// Whether storage has been failing writes (`/readyz`).
    pub storage: health::StorageHealth,
    /// Verified tokens, sessions and API tokens seen recently, with cross-instance
    /// invalidation (issue 15).
    pub session_cache: Arc<session_cache::SessionCache>,
}

/// The credential a request was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user's access token, bound to a live session.
    Session(SessionId),
    /// An API token (`kasho_…`), acting for the user who created it within its scopes.
    ApiToken(String),
}

/// Who is calling: established from a verified access token and a live session, or from an
/// API token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user; for an API token, the user who created it.
    pub user_id: UserId,
    pub tenant_id: Option<TenantId>,
    pub credential: Credential,
    pub roles: Vec<Role>,
    /// What this request may do: the roles' permissions, narrowed to the token's scopes for an
    /// API token.
    pub permissions: PermissionSet,
    /// When the session last proved the password (or a second factor): sign-in or step-up.
    /// `None` for API tokens, which cannot step up.
    pub authenticated_at: Option<crate::clock::Timestamp>,
    /// The user's role requires MFA and they have not enrolled: only enrolment is allowed.
    pub mfa_enrolment_required: bool,
    /// The security policy of the caller's tenant (the platform's for platform admins), as read
    /// with the credential: step-up windows and thresholds come from here.
    pub policy: Arc<crate::domain::security::SecurityPolicy>,
}

impl Principal {
    /// The caller's tenant; platform admins have none and so cannot reach tenant data.
    pub fn tenant(&self) -> AppResult<&TenantId> {
        self.tenant_id.as_ref().ok_or_else(AppError::forbidden)
    }

    /// The scope at which `perm` is held (the middleware has already checked it is held).
    pub fn scope(&self, perm: Permission) -> AppResult<Scope> {
        self.permissions.scope(perm).ok_or_else(AppError::forbidden)
    }

    /// The session behind this request, if it was made with a user's access token.
    pub fn session_id(&self) -> Option<&SessionId> {
        match &self.credential {
            Credential::Session(s) => Some(s),
            Credential::ApiToken(_) => None,
        }
    }

    /// Whose idempotency keys this request uses: the user's for sessions (a client that signs
    /// in again and retries still gets its replay), the token's own for an API token (two
    /// integrations of one user never see each other's stored answers).
    pub fn idempotency_scope(&self) -> String {
        match &self.credential {
            Credential::Session(_) => self.user_id.to_string(),
            Credential::ApiToken(id) => id.clone(),
        }
    }

    /// The session, or a refusal for API tokens (sign-out, sessions, step-up).
    pub fn require_session(&self) -> AppResult<&SessionId> {
        self.session_id().ok_or(AppError::Forbidden {
            code: "session_required",
            message:
                "this action needs a user signed in with a password; API tokens cannot perform it"
                    .into(),
        })
    }

    /// What the committing transaction re-checks of this caller: its credential, its user's
    /// status and the roles this request was authorised with (issue 14).
    pub fn actor_check(&self) -> crate::store::ActorCheck {
        crate::store::ActorCheck {
            user_id: self.user_id.to_string(),
            credential: match &self.credential {
                Credential::Session(s) => crate::store::ActorCredential::Session(s.to_string()),
                Credential::ApiToken(t) => crate::store::ActorCredential::ApiToken(t.clone()),
            },
            roles: self.roles.clone(),
            step_up: (!self.policy.step_up_transfer_threshold.is_empty()).then(|| {
                crate::domain::authz::StepUpRule {
                    thresholds: self.policy.step_up_transfer_threshold.clone(),
                    max_age_seconds: self.policy.step_up_max_age_seconds,
                }
            }),
        }
    }

    /// Who the audit trail names as the actor: the user, or the API token.
    pub fn audit_actor(&self) -> (ActorType, String) {
        match &self.credential {
            Credential::Session(_) => (ActorType::User, self.user_id.to_string()),
            Credential::ApiToken(id) => (ActorType::ApiToken, id.clone()),
        }
    }
}

/// Facts about the request that the audit trail records.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Builds audit records with the request's facts filled in.
pub struct AuditBuilder<'a> {
    meta: &'a RequestMeta,
    actor: Option<&'a Principal>,
    at: crate::clock::Timestamp,
}

impl<'a> AuditBuilder<'a> {
    pub fn new(core: &Core, meta: &'a RequestMeta, actor: Option<&'a Principal>) -> Self {
        Self {
            meta,
            actor,
            at: core.clock.now(),
        }
    }

    /// A record in `tenant`'s chain (the platform chain for `None`).
    pub fn event(
        &self,
        tenant: Option<&TenantId>,
        action: &str,
        target: Option<(&str, &str)>,
        outcome: Outcome,
        reason: Option<&str>,
    ) -> NewAuditEvent {
        NewAuditEvent {
            tenant_id: tenant.cloned(),
            occurred_at: self.at,
            actor_type: self
                .actor
                .map_or(ActorType::Anonymous, |p| p.audit_actor().0),
            actor_id: self.actor.map(|p| p.audit_actor().1),
            action: action.to_owned(),
            target_type: target.map(|(t, _)| t.to_owned()),
            target_id: target.map(|(_, id)| id.to_owned()),
            outcome,
            reason: reason.map(str::to_owned),
            ip: self.meta.ip.clone(),
            request_id: self.meta.request_id.clone(),
            security_event: None,
        }
    }

    /// A record in the actor's own chain.
    pub fn own(
        &self,
        action: &str,
        target: Option<(&str, &str)>,
        outcome: Outcome,
        reason: Option<&str>,
    ) -> NewAuditEvent {
        let tenant = self.actor.and_then(|p| p.tenant_id.as_ref());
        self.event(tenant, action, target, outcome, reason)
    }
}

/// A page of results and whether more follow.
#[derive(Debug)]
pub struct Listed<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

impl<T> Listed<T> {
    /// Trims the extra row the store fetched to learn whether more follow.
    pub fn from_rows(mut rows: Vec<T>, page: &Page) -> Self {
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self {
            data: rows,
            has_more,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Listed<U> {
        Listed {
            data: self.data.into_iter().map(f).collect(),
            has_more: self.has_more,
        }
    }
}
