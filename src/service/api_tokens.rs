//! API tokens: long-lived credentials for integrations, acting for the user who created them
//! within their scopes (issue 5 item 7), optionally limited to addresses (item 9), and the
//! verification of signed requests (item 8).
//!
//! - A secret is `kasho_` + 43 base64url characters (256 random bits), shown once. Only its
//!   HMAC-SHA256 under a key derived from the master key is stored, so the database never
//!   holds a usable token and a stolen table cannot be brute-forced offline without the key.
//! - Scopes are permission names; each is stored with the creator's scope at creation
//!   (`own`/`all`) and every request narrows them again to the creator's CURRENT roles: a
//!   demoted creator's tokens shrink, a disabled creator's or suspended tenant's tokens stop.
//! - Managing tokens needs `api_tokens:manage`: MANAGERs at `All` (list and revoke every token
//!   of the tenant), other staff at `Own`. Creating and rotating need step-up (so an API token
//!   can never mint secrets) and only a token's creator may rotate it (a manager rotating a
//!   cashier's token would otherwise hold a secret acting as the cashier).
//! - Every secret is issued with a signing secret (`kasho_sig_…`, 256 bits) of its own, shown
//!   once beside it: the HMAC key of signed requests (issue 13 item 15). A signature cannot be
//!   checked against a hash of its key, so it is stored sealed under the tenant's data key.
//!   Someone who sees a request (and so its bearer secret) still cannot sign another one.
//!   Secrets issued before signing secrets existed keep signing with the bearer secret until
//!   the token's next rotation issues one.

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::{AuditBuilder, Core, Credential, Listed, Principal, RequestMeta, security};
use crate::clock::Timestamp;
use crate::domain::audit::Outcome;
use crate::domain::authz::{Permission, PermissionSet, Role, Scope, roles_from_storage};
use crate::domain::security::{Cidr, SecurityEvent, allowed, bounds};
use crate::domain::signing;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::service::keys::KeyOwner;
use crate::store::Page;
use crate::store::api_tokens::{ApiTokenAuthView, ApiTokenRecord, NewApiToken};
use crate::store::keys::API_TOKEN_SIGNING_SECRET;

/// The prefix of every API-token secret (secret scanners look for it).
pub const SECRET_PREFIX: &str = "kasho_";
/// The prefix of every signing secret (scanners' `kasho_` rules catch it too).
pub const SIGNING_SECRET_PREFIX: &str = "kasho_sig_";
/// The lifetimes a token may be created with (FinCode's choices).
pub const EXPIRES_IN: [(&str, i64); 5] = [
    ("24h", 86_400),
    ("30d", 30 * 86_400),
    ("90d", 90 * 86_400),
    ("180d", 180 * 86_400),
    ("365d", 365 * 86_400),
];
/// A token this close to its expiry is listed as `expiring_soon`.
pub const EXPIRING_SOON_SECONDS: i64 = 7 * 86_400;
/// The longest overlap a rotation may give the previous secret.
pub const MAX_ROTATION_OVERLAP_SECONDS: i64 = 86_400;
/// `last_used_at` is written at most this often per token.
pub const TOUCH_INTERVAL_SECONDS: i64 = 60;
/// A token name's length bounds.
const NAME_LEN: (usize, usize) = (1, 100);

/// The HMAC key API-token secrets are stored under.
pub struct TokenHashKey(Zeroizing<[u8; 32]>);

impl TokenHashKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(Zeroizing::new(key))
    }

    /// Hex HMAC-SHA256 of a presented secret.
    pub fn hash(&self, secret: &str) -> String {
        hex::encode(crate::crypto::hmac_sha256(
            self.0.as_slice(),
            secret.as_bytes(),
        ))
    }
}

impl std::fmt::Debug for TokenHashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHashKey(<redacted>)")
    }
}

/// Whether a presented bearer credential is an API token (rather than a JWT).
pub fn is_api_token(presented: &str) -> bool {
    presented.starts_with(SECRET_PREFIX)
}

/// A token as its owner (or a manager) sees it.
#[derive(Debug, Clone)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub user_id: String,
    pub scopes: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub rotated_at: Option<Timestamp>,
    pub expiring_soon: bool,
}

/// A new secret and its signing secret, shown once (`Debug` shows neither: `SecretString`).
#[derive(Debug)]
pub struct Issued {
    pub token: TokenView,
    pub secret: SecretString,
    /// The HMAC key of signed requests made with `secret`.
    pub signing_secret: SecretString,
    /// Until when the previous secret keeps working (rotations only).
    pub previous_valid_until: Option<Timestamp>,
}

pub struct CreateInput {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_in: String,
    pub allowed_ips: Vec<String>,
}

fn scopes_to_storage(set: &PermissionSet) -> String {
    set.iter()
        .map(|(p, s)| format!("{}={}", p.as_str(), s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn scopes_from_storage(s: &str) -> PermissionSet {
    PermissionSet::from_grants(s.split(',').filter_map(|part| {
        let (name, scope) = part.split_once('=')?;
        let perm = Permission::ALL.into_iter().find(|p| p.as_str() == name)?;
        let scope = match scope {
            "all" => Scope::All,
            "own" => Scope::Own,
            _ => return None,
        };
        Some((perm, scope))
    }))
}

fn cidrs_from_storage(s: &str) -> Vec<Cidr> {
    s.split(',')
        .filter(|c| !c.is_empty())
        .filter_map(|c| c.parse().ok())
        .collect()
}

fn view(r: ApiTokenRecord, now: Timestamp) -> TokenView {
    let expires_at = Timestamp::from_micros(r.expires_at);
    TokenView {
        scopes: scopes_from_storage(&r.scopes)
            .iter()
            .map(|(p, _)| p.as_str().to_owned())
            .collect(),
        allowed_ips: cidrs_from_storage(&r.allowed_ips)
            .iter()
            .map(ToString::to_string)
            .collect(),
        created_at: Timestamp::from_micros(r.created_at),
        expiring_soon: now.plus_seconds(EXPIRING_SOON_SECONDS) >= expires_at,
        expires_at,
        last_used_at: r.last_used_at.map(Timestamp::from_micros),
        rotated_at: r.rotated_at.map(Timestamp::from_micros),
        id: r.id,
        name: r.name,
        user_id: r.user_id,
    }
}

fn new_secret() -> AppResult<String> {
    let random = crate::crypto::random_token().map_err(|_| AppError::internal("no randomness"))?;
    Ok(format!("{SECRET_PREFIX}{random}"))
}

fn new_signing_secret() -> AppResult<Zeroizing<String>> {
    let random = crate::crypto::random_token().map_err(|_| AppError::internal("no randomness"))?;
    Ok(Zeroizing::new(format!("{SIGNING_SECRET_PREFIX}{random}")))
}

/// Seals a signing secret for the secret row `secret_hash` under the tenant's data key.
async fn seal_signing_secret(
    core: &Core,
    tenant: &TenantId,
    secret_hash: &str,
    signing: &str,
) -> AppResult<String> {
    core.keyring
        .seal(
            tenant,
            &KeyOwner::Tenant,
            API_TOKEN_SIGNING_SECRET,
            secret_hash,
            signing.as_bytes(),
        )
        .await
}

fn new_id() -> String {
    format!("atk_{}", uuid::Uuid::now_v7().simple())
}

/// Creates a token for the caller (needs step-up). Scopes beyond the caller's own
/// permissions are refused; each scope keeps the caller's scope (`own` stays `own`).
pub async fn create(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: CreateInput,
) -> AppResult<Issued> {
    let tenant = actor.tenant()?.clone();
    let name = input.name.trim().to_owned();
    if !(NAME_LEN.0..=NAME_LEN.1).contains(&name.chars().count()) {
        return Err(AppError::invalid(
            "name",
            "give the token a name of 1 to 100 characters",
        ));
    }
    if input.scopes.is_empty() {
        return Err(AppError::invalid(
            "scopes",
            "give at least one scope (a permission name such as accounts:read)",
        ));
    }
    let mut requested = Vec::with_capacity(input.scopes.len());
    for s in &input.scopes {
        let perm = Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                AppError::invalid(
                    "scopes",
                    format!("unknown scope `{s}`; scopes are permission names such as accounts:read or transfers:create"),
                )
            })?;
        requested.push(perm);
    }
    let lifetime = EXPIRES_IN
        .iter()
        .find(|(k, _)| *k == input.expires_in)
        .map(|(_, secs)| *secs)
        .ok_or_else(|| {
            AppError::invalid(
                "expires_in",
                format!(
                    "expires_in must be one of {}",
                    EXPIRES_IN.map(|(k, _)| k).join(", ")
                ),
            )
        })?;
    if input.allowed_ips.len() > bounds::MAX_ALLOWED_IPS {
        return Err(AppError::invalid(
            "allowed_ips",
            format!("at most {} entries are allowed", bounds::MAX_ALLOWED_IPS),
        ));
    }
    let mut ips = Vec::with_capacity(input.allowed_ips.len());
    for c in &input.allowed_ips {
        ips.push(
            c.parse::<Cidr>()
                .map_err(|e| AppError::invalid("allowed_ips", e))?,
        );
    }
    // Never wider than the creator: each scope at the creator's own scope.
    let mut grants = Vec::with_capacity(requested.len());
    for perm in requested {
        match actor.permissions.scope(perm) {
            Some(scope) => grants.push((perm, scope)),
            None => {
                let audit = AuditBuilder::new(core, meta, Some(actor));
                security::record(
                    core,
                    security::event(
                        &audit,
                        Some(&tenant),
                        SecurityEvent::AuthorizationRefused,
                        "api_token.create",
                        None,
                        Outcome::Denied,
                        Some("scope_not_held"),
                    ),
                )
                .await;
                return Err(AppError::Forbidden {
                    code: "scope_not_held",
                    message: format!(
                        "you do not hold `{}`, so a token you create cannot either",
                        perm.as_str()
                    ),
                });
            }
        }
    }
    security::require_step_up(core, meta, actor).await?;

    let now = core.clock.now();
    let secret = new_secret()?;
    let secret_hash = core.api_token_key.hash(&secret);
    let signing = new_signing_secret()?;
    let sealed_signing = seal_signing_secret(core, &tenant, &secret_hash, &signing).await?;
    let id = new_id();
    let scopes = PermissionSet::from_grants(grants);
    let record = NewApiToken {
        id: id.clone(),
        tenant_id: tenant.clone(),
        user_id: actor.user_id.clone(),
        name: name.clone(),
        scopes: scopes_to_storage(&scopes),
        allowed_ips: ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        secret_hash,
        signing_secret: sealed_signing,
        created_at: now,
        expires_at: now.plus_seconds(lifetime),
        actor: Some(actor.actor_check()),
    };
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "api_token.create",
        Some(("api_token", id.as_str())),
        Outcome::Success,
        None,
    );
    core.store.create_api_token(&record, &[ev]).await?;
    let stored = ApiTokenRecord {
        id,
        tenant_id: tenant.to_string(),
        user_id: actor.user_id.to_string(),
        name,
        scopes: record.scopes,
        allowed_ips: record.allowed_ips,
        created_at: now.as_micros(),
        expires_at: record.expires_at.as_micros(),
        last_used_at: None,
        rotated_at: None,
        revoked_at: None,
    };
    Ok(Issued {
        token: view(stored, now),
        secret: SecretString::from(secret),
        signing_secret: SecretString::from(signing.as_str()),
        previous_valid_until: None,
    })
}

/// Live tokens: every one of the tenant for `All`, the caller's own for `Own`.
pub async fn list(core: &Core, actor: &Principal, page: &Page) -> AppResult<Listed<TokenView>> {
    let tenant = actor.tenant()?;
    let only = match actor.scope(Permission::ApiTokensManage)? {
        Scope::All => None,
        Scope::Own => Some(&actor.user_id),
    };
    let rows = core.store.list_api_tokens(tenant, only, page).await?;
    let now = core.clock.now();
    Ok(Listed::from_rows(rows, page).map(|r| view(r, now)))
}

/// A token the caller may see (its own, or any of the tenant's at `All`).
async fn visible(core: &Core, actor: &Principal, id: &str) -> AppResult<ApiTokenRecord> {
    let tenant = actor.tenant()?;
    let token = core
        .store
        .get_api_token(tenant, id)
        .await?
        .filter(|t| t.revoked_at.is_none())
        .ok_or(AppError::NotFound("api_token"))?;
    let all = actor.scope(Permission::ApiTokensManage)? == Scope::All;
    if !all && token.user_id != actor.user_id.as_str() {
        return Err(AppError::NotFound("api_token"));
    }
    Ok(token)
}

/// Revokes a token at once (all its secrets).
pub async fn revoke(core: &Core, meta: &RequestMeta, actor: &Principal, id: &str) -> AppResult<()> {
    let token = visible(core, actor, id).await?;
    let tenant = actor.tenant()?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "api_token.revoke",
        Some(("api_token", token.id.as_str())),
        Outcome::Success,
        None,
    );
    let (_, by) = actor.audit_actor();
    if !core
        .session_cache
        .after(
            core.store
                .revoke_api_token(tenant, &token.id, &by, core.clock.now(), &[ev]),
        )
        .await?
    {
        return Err(AppError::NotFound("api_token"));
    }
    Ok(())
}

/// Issues a new secret for one of the caller's own tokens (needs step-up); the previous one
/// keeps working for `overlap_seconds` (default from configuration, at most 24 h).
pub async fn rotate(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    overlap_seconds: Option<i64>,
) -> AppResult<Issued> {
    let overlap = overlap_seconds.unwrap_or(core.settings.api_token_rotation_overlap_seconds);
    if !(0..=MAX_ROTATION_OVERLAP_SECONDS).contains(&overlap) {
        return Err(AppError::invalid(
            "overlap_seconds",
            "overlap_seconds must be between 0 and 86400 (24 hours)",
        ));
    }
    let token = visible(core, actor, id).await?;
    if token.user_id != actor.user_id.as_str() {
        return Err(AppError::Forbidden {
            code: "not_token_owner",
            message: "only the user who created a token can rotate it (anyone else would hold a secret acting as that user); revoke it instead".into(),
        });
    }
    security::require_step_up(core, meta, actor).await?;
    let tenant = actor.tenant()?;
    let now = core.clock.now();
    let secret = new_secret()?;
    let secret_hash = core.api_token_key.hash(&secret);
    // A token issued before signing secrets existed gets its first one here; until now it
    // signed with its bearer secret (and its previous secret still does, for the overlap).
    let signing = new_signing_secret()?;
    let sealed_signing = seal_signing_secret(core, tenant, &secret_hash, &signing).await?;
    let until = now.plus_seconds(overlap);
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "api_token.rotate",
        Some(("api_token", token.id.as_str())),
        Outcome::Success,
        None,
    );
    if !core
        .session_cache
        .after(core.store.rotate_api_token(
            tenant,
            &token.id,
            &secret_hash,
            &sealed_signing,
            until,
            now,
            &[ev],
        ))
        .await?
    {
        return Err(AppError::NotFound("api_token"));
    }
    let rotated = ApiTokenRecord {
        rotated_at: Some(now.as_micros()),
        ..token
    };
    Ok(Issued {
        token: view(rotated, now),
        secret: SecretString::from(secret),
        signing_secret: SecretString::from(signing.as_str()),
        previous_valid_until: Some(until),
    })
}

/// An authenticated API-token request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    /// The tenant requires its API-token requests to be signed.
    pub require_signed: bool,
    /// Which key verifies this secret's signed requests.
    pub signing_key: SigningKey,
}

/// The HMAC key of a secret's signed requests.
#[derive(Clone)]
pub enum SigningKey {
    /// The signing secret issued with the presented secret, sealed under the tenant key
    /// (AAD row = `secret_hash`); opened only when a request is signed.
    Sealed { secret_hash: String, sealed: String },
    /// A secret issued before signing secrets existed: the bearer secret itself, until the
    /// token's next rotation.
    Legacy,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningKey::Sealed { .. } => "SigningKey::Sealed(..)",
            SigningKey::Legacy => "SigningKey::Legacy",
        })
    }
}

/// Turns a presented `kasho_…` secret into a principal: the creator, narrowed to the token's
/// scopes within the creator's current permissions; the address must pass the token's and
/// the tenant's allow-lists.
pub async fn authenticate(
    core: &Core,
    meta: &RequestMeta,
    presented: &str,
) -> AppResult<Authenticated> {
    let now = core.clock.now();
    let hash = core.api_token_key.hash(presented);
    let ip: Option<std::net::IpAddr> = meta.ip.as_deref().and_then(|s| s.parse().ok());
    // A secret checked recently is admitted from the cache when its cached view admits this
    // request; anything it would refuse is decided on a fresh read (issue 15).
    let cache = &core.session_cache;
    let hit = cache.api_token(&hash).filter(|e| {
        token_problem(Some(&e.view), &hash, now).is_none()
            && allowed(&cidrs_from_storage(&e.view.allowed_ips), ip.as_ref())
            && allowed(&e.policy.allowed_ips, ip.as_ref())
    });
    let ticket = cache.ticket();
    let (found, cached_policy) = match hit {
        Some(e) => {
            cache.count(true);
            (Some(e.view.as_ref().clone()), Some(e.policy))
        }
        None => {
            cache.forget_api_token(&hash);
            cache.count(false);
            (core.store.api_token_by_secret(&hash).await?, None)
        }
    };
    let from_cache = cached_policy.is_some();
    let problem = token_problem(found.as_ref(), &hash, now);
    if let Some(reason) = problem {
        let audit = AuditBuilder::new(core, meta, None);
        let tenant = found
            .as_ref()
            .map(|v| TenantId::from_trusted(v.tenant_id.clone()));
        let mut ev = security::event(
            &audit,
            tenant.as_ref(),
            SecurityEvent::TokenRejected,
            "auth.token_rejected",
            found.as_ref().map(|v| ("api_token", v.id.as_str())),
            Outcome::Failure,
            Some(reason),
        );
        if let Some(v) = &found {
            ev.actor_type = crate::domain::audit::ActorType::ApiToken;
            ev.actor_id = Some(v.id.clone());
        }
        security::record(core, ev).await;
        return Err(match reason {
            "token_expired" => AppError::Unauthenticated {
                code: "token_expired",
                message: "the API token has expired; create a new one".into(),
            },
            "token_revoked" => AppError::InvalidToken("the API token has been revoked"),
            "secret_rotated_out" => AppError::InvalidToken(
                "this secret was replaced by a rotation and its overlap has ended; use the new secret",
            ),
            _ => AppError::InvalidToken("the API token is invalid"),
        });
    }
    let Some(v) = found else {
        return Err(AppError::InvalidToken("the API token is invalid"));
    };
    let roles: Vec<Role> = roles_from_storage(&v.roles);
    let tenant = TenantId::from_trusted(v.tenant_id.clone());
    let policy = cached_policy
        .unwrap_or_else(|| std::sync::Arc::new(security::policy_from(core, v.policy.as_deref())));
    let principal = Principal {
        user_id: UserId::from_trusted(v.user_id.clone()),
        tenant_id: Some(tenant.clone()),
        credential: Credential::ApiToken(v.id.clone()),
        permissions: scopes_from_storage(&v.scopes).intersect(&PermissionSet::for_roles(&roles)),
        roles: roles.clone(),
        authenticated_at: None,
        // A creator whose role must use MFA and who has not enrolled cannot act through a
        // token either (the middleware allows such a principal nothing but enrolment routes,
        // which need a session).
        mfa_enrolment_required: policy.mfa_required_for(&roles) && v.mfa_enabled == 0,
        policy: policy.clone(),
    };

    // Allow-lists: the token's and the tenant's, both when set.
    let token_ok = allowed(&cidrs_from_storage(&v.allowed_ips), ip.as_ref());
    let tenant_ok = allowed(&policy.allowed_ips, ip.as_ref());
    if !token_ok || !tenant_ok {
        let audit = AuditBuilder::new(core, meta, Some(&principal));
        security::record(
            core,
            security::event(
                &audit,
                Some(&tenant),
                SecurityEvent::IpRefused,
                "security.ip_refused",
                Some(("api_token", v.id.as_str())),
                Outcome::Denied,
                Some(if token_ok {
                    "tenant_allow_list"
                } else {
                    "token_allow_list"
                }),
            ),
        )
        .await;
        return Err(AppError::Forbidden {
            code: "ip_not_allowed",
            message: "requests with this API token are not allowed from this address".into(),
        });
    }

    if v.last_used_at
        .is_none_or(|t| Timestamp::from_micros(t).plus_seconds(TOUCH_INTERVAL_SECONDS) <= now)
    {
        // The remembered `last_used_at` is now older than the row's: read again next time.
        cache.forget_api_token(&hash);
        if let Err(e) = core
            .store
            .touch_api_token(&v.id, now, TOUCH_INTERVAL_SECONDS)
            .await
        {
            tracing::warn!(error = %e, "could not record API token use");
        }
    } else if !from_cache {
        cache.put_api_token(ticket, hash.clone(), v.clone(), policy.clone());
    }
    let signing_key = match v.signing_secret {
        Some(sealed) => SigningKey::Sealed {
            secret_hash: v.secret_hash,
            sealed,
        },
        None => SigningKey::Legacy,
    };
    Ok(Authenticated {
        principal,
        require_signed: policy.require_signed_requests,
        signing_key,
    })
}

/// Why a presented secret's view may not be used now, if it may not.
fn token_problem(
    found: Option<&ApiTokenAuthView>,
    hash: &str,
    now: Timestamp,
) -> Option<&'static str> {
    match found {
        None => Some("unknown_token"),
        Some(v) if !crate::crypto::constant_time_eq(v.secret_hash.as_bytes(), hash.as_bytes()) => {
            Some("unknown_token")
        }
        Some(v) if v.revoked_at.is_some() => Some("token_revoked"),
        Some(v) if v.expires_at <= now.as_micros() => Some("token_expired"),
        Some(v) if v.valid_until.is_some_and(|u| u <= now.as_micros()) => {
            Some("secret_rotated_out")
        }
        Some(v) if v.user_status != "active" => Some("user_disabled"),
        Some(v) if v.tenant_status != "active" => Some("tenant_suspended"),
        Some(_) => None,
    }
}

/// The signature headers of a request, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignatureHeaders<'a> {
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl SignatureHeaders<'_> {
    /// Whether the request carries any of the signing headers.
    pub fn any(&self) -> bool {
        self.timestamp.is_some() || self.nonce.is_some() || self.signature.is_some()
    }
}

/// Checks a request's signature (made with the secret's signing secret, or, for a secret from
/// before signing secrets, with the presented bearer secret): required when the tenant says
/// so, and checked whenever one is sent. A valid signature's nonce is remembered so the
/// same request cannot be replayed within the tolerance window.
#[allow(clippy::too_many_arguments)]
pub async fn verify_signature(
    core: &Core,
    meta: &RequestMeta,
    auth: &Authenticated,
    secret: &str,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: SignatureHeaders<'_>,
    body: &[u8],
) -> AppResult<()> {
    if !headers.any() && !auth.require_signed {
        return Ok(());
    }
    let principal = &auth.principal;
    let token_id = match &principal.credential {
        Credential::ApiToken(id) => id.clone(),
        Credential::Session(_) => return Ok(()),
    };
    let refuse = |kind: SecurityEvent, code: &'static str, message: String| {
        let audit = AuditBuilder::new(core, meta, Some(principal));
        let ev = security::event(
            &audit,
            principal.tenant_id.as_ref(),
            kind,
            "security.signature_refused",
            Some(("api_token", token_id.as_str())),
            Outcome::Denied,
            Some(code),
        );
        (ev, AppError::Unauthenticated { code, message })
    };
    let key: Zeroizing<String> = match &auth.signing_key {
        SigningKey::Legacy => Zeroizing::new(secret.to_owned()),
        SigningKey::Sealed {
            secret_hash,
            sealed,
        } => {
            let tenant = principal.tenant()?;
            core.keyring
                .open_text(
                    &API_TOKEN_SIGNING_SECRET.at(tenant.as_str(), secret_hash),
                    sealed,
                )
                .await?
        }
    };
    let checked = check(core, &token_id, &key, method, path, query, headers, body).await;
    match checked {
        Ok(()) => Ok(()),
        Err((kind, code, message)) => {
            let (ev, err) = refuse(kind, code, message);
            security::record(core, ev).await;
            Err(err)
        }
    }
}

type Refusal = (SecurityEvent, &'static str, String);

#[allow(clippy::too_many_arguments)]
async fn check(
    core: &Core,
    token_id: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: SignatureHeaders<'_>,
    body: &[u8],
) -> Result<(), Refusal> {
    let invalid = |code: &'static str, message: &str| {
        (SecurityEvent::SignatureInvalid, code, message.to_owned())
    };
    let (Some(ts), Some(nonce), Some(sig)) = (headers.timestamp, headers.nonce, headers.signature)
    else {
        return Err(if headers.any() {
            invalid(
                "signature_invalid",
                "a signed request needs all of Kasho-Timestamp, Kasho-Nonce and Kasho-Signature",
            )
        } else {
            invalid(
                "signature_required",
                "this tenant requires API-token requests to be signed (Kasho-Timestamp, Kasho-Nonce, Kasho-Signature)",
            )
        });
    };
    let ts_secs = signing::parse_timestamp(ts)
        .map_err(|_| invalid("signature_invalid", "Kasho-Timestamp must be unix seconds"))?;
    signing::check_nonce(nonce).map_err(|_| {
        invalid(
            "signature_invalid",
            "Kasho-Nonce must be 16 to 128 of A-Z a-z 0-9 - . _ ~",
        )
    })?;
    let sigs = signing::parse_signatures(sig).map_err(|_| {
        invalid(
            "signature_invalid",
            "Kasho-Signature must be v1=<64 hex digits> (up to 5, comma separated)",
        )
    })?;
    let now = core.clock.now();
    let now_secs = now.as_micros().div_euclid(1_000_000);
    if !signing::within_tolerance(ts_secs, now_secs) {
        return Err(invalid(
            "signature_expired",
            "Kasho-Timestamp is more than 300 seconds from the server's clock",
        ));
    }
    let canonical = signing::canonical_request(&signing::RequestParts {
        method,
        path,
        query,
        timestamp: ts,
        nonce,
        body,
    });
    if !signing::verify(secret, &canonical, &sigs) {
        return Err(invalid(
            "signature_invalid",
            "the signature does not match the request (see `kasho sign` to check your canonical request)",
        ));
    }
    // Remembered until the timestamp leaves the window, so a replay is refused as a replay
    // while it could otherwise pass, and as expired after.
    let until = Timestamp::from_micros(
        ts_secs
            .saturating_add(signing::TOLERANCE_SECONDS + 1)
            .saturating_mul(1_000_000),
    );
    match core.store.remember_nonce(token_id, nonce, until, now).await {
        Ok(true) => Ok(()),
        Ok(false) => Err((
            SecurityEvent::RequestReplayed,
            "request_replayed",
            "this nonce was already used; sign every request with a fresh nonce".into(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "could not remember a request nonce");
            Err(invalid(
                "signature_unverifiable",
                "the signature could not be checked; try again",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_prefix_and_256_bits() {
        let s = new_secret().unwrap_or_else(|e| unreachable!("{e}"));
        assert!(is_api_token(&s));
        assert_eq!(s.len(), SECRET_PREFIX.len() + 43);
        assert_ne!(s, new_secret().unwrap_or_else(|e| unreachable!("{e}")));
        assert!(!is_api_token("eyJhbGciOiJFZERTQSJ9.x.y"));
        let k = new_signing_secret().unwrap_or_else(|e| unreachable!("{e}"));
        assert!(k.starts_with(SIGNING_SECRET_PREFIX));
        assert_eq!(k.len(), SIGNING_SECRET_PREFIX.len() + 43);
    }

    #[test]
    fn scopes_round_trip_through_storage() {
        let set = PermissionSet::from_grants([
            (Permission::TransfersCreate, Scope::Own),
            (Permission::KycDocumentsRead, Scope::All),
        ]);
        let stored = scopes_to_storage(&set);
        assert_eq!(stored, "transfers:create=own,kyc:documents:read=all");
        assert_eq!(scopes_from_storage(&stored), set);
        // Unknown names (a permission removed later) are dropped, never widened.
        assert_eq!(
            scopes_from_storage("nope=all,transfers:create=own,accounts:read=root"),
            PermissionSet::from_grants([(Permission::TransfersCreate, Scope::Own)])
        );
    }

    #[test]
    fn hash_key_is_keyed_and_redacted() {
        let a = TokenHashKey::new([1; 32]);
        let b = TokenHashKey::new([2; 32]);
        assert_ne!(a.hash("kasho_x"), b.hash("kasho_x"));
        assert_eq!(a.hash("kasho_x").len(), 64);
        assert_eq!(format!("{a:?}"), "TokenHashKey(<redacted>)");
    }
}
