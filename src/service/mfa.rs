//! Multi-factor authentication: TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps) with
//! single-use recovery codes, and the second step of a sign-in.
//!
//! - Enrolment stores a pending secret (160 random bits, AES-256-GCM at rest); nothing is
//!   active until a current code confirms it, which also issues 10 recovery codes, shown once
//!   and stored as SHA-256 digests.
//! - A code is accepted for the current step or the previous one, and only for a step later
//!   than the last one the user had accepted (a conditional UPDATE), so a code never works
//!   twice, even in two concurrent requests. Recovery codes are spent the same way.
//! - A sign-in with a correct password for a user with MFA gets an opaque challenge token
//!   (256 bits, stored hashed, 5 minutes, single use, dead after 5 codes tried);
//!   `POST /v1/auth/mfa` finishes it. Each code is counted against the challenge and the
//!   account's lockout BEFORE it is checked (`service::guesses`), like a password; wrong codes
//!   are security events.

use aws_lc_rs::hmac;
use base64::Engine;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::auth::{Audited, LoginResult, TokenPair};
use super::{AuditBuilder, Core, Principal, RequestMeta, security};
use crate::clock::Timestamp;
use crate::crypto::{constant_time_eq, random_bytes, random_token, sha256_hex};
use crate::domain::audit::Outcome;
use crate::domain::security::SecurityEvent;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::observability::CredentialKind;
use crate::service::keys::KeyOwner;
use crate::store::keys::{EncryptedColumn, MFA_TOTP_PENDING_SECRET, MFA_TOTP_SECRET};
use crate::store::mfa::{MfaChallengeRecord, TotpConfirmation};

/// Seconds per TOTP step.
pub const TOTP_STEP_SECONDS: i64 = 30;
/// Digits per TOTP code.
pub const TOTP_DIGITS: u32 = 6;
/// Bytes of a TOTP secret (160 bits, RFC 4226's recommendation; 32 base32 characters).
pub const SECRET_BYTES: usize = 20;
/// Recovery codes issued at a time.
pub const RECOVERY_CODES: usize = 10;
/// Bytes of a recovery code (80 bits; 16 base32 characters, shown as 4 groups of 4).
const RECOVERY_CODE_BYTES: usize = 10;
/// How long a sign-in challenge lives.
pub const CHALLENGE_TTL_SECONDS: i64 = 300;
/// Wrong codes after which a challenge is dead (a new sign-in is needed).
pub const CHALLENGE_MAX_FAILURES: i64 = 5;
/// How long an enrolment waits for its confirming code.
pub const ENROLMENT_TTL_SECONDS: i64 = 900;

// ---------------------------------------------------------------------------------------------
// TOTP and encodings (pure).

/// RFC 4226 HOTP value of `counter` under `key`.
pub fn hotp(key: &[u8], counter: u64) -> u32 {
    let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&k, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = mac
        .get(offset..offset + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes);
    (word & 0x7fff_ffff) % 10u32.pow(TOTP_DIGITS)
}

/// The TOTP step `now` falls in.
pub fn step_at(now: Timestamp) -> i64 {
    now.unix_seconds().div_euclid(TOTP_STEP_SECONDS)
}

/// The code of `step`, zero-padded.
pub fn totp_code(key: &[u8], step: i64) -> String {
    let counter = u64::try_from(step).unwrap_or(0);
    format!(
        "{:0width$}",
        hotp(key, counter),
        width = TOTP_DIGITS as usize
    )
}

/// The step `code` belongs to: the current one or the previous one (clock drift and typing
/// time), never older, never ahead. Both are computed and compared in constant time.
pub fn matching_step(key: &[u8], code: &str, now: Timestamp) -> Option<i64> {
    let current = step_at(now);
    let mut found = None;
    for step in [current - 1, current] {
        if constant_time_eq(totp_code(key, step).as_bytes(), code.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (what authenticator apps read).
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `otpauth://` URI authenticator apps enrol from (Google Authenticator's key-URI format).
pub fn otpauth_uri(issuer: &str, account: &str, secret_b32: &str) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECONDS}",
        percent(issuer),
        percent(account),
        percent(issuer),
    )
}

/// A QR code of `data` as an SVG `data:` URI (no raster image codecs involved).
pub fn qr_svg_data_uri(data: &str) -> AppResult<String> {
    let code = qrcode::QrCode::new(data.as_bytes()).map_err(AppError::internal)?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .build();
    Ok(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

/// A code as typed: spaces and dashes dropped, letters upper-cased.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn is_totp_shape(code: &str) -> bool {
    code.len() == TOTP_DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit())
}

/// The stored digest of a recovery code: SHA-256 over the user id and the normalised code.
/// The codes carry 80 random bits, so a fast hash is enough (no guessing from the digest);
/// the user id keeps equal codes of two users apart.
fn recovery_hash(user: &UserId, normalised: &str) -> String {
    sha256_hex(format!("kasho/mfa-recovery/v1\u{0}{user}\u{0}{normalised}").as_bytes())
}

/// Fresh recovery codes (as shown: `ABCD-EFGH-IJKL-MNOP`) and their digests.
fn new_recovery_codes(user: &UserId) -> AppResult<(Vec<String>, Vec<String>)> {
    let mut shown = Vec::with_capacity(RECOVERY_CODES);
    let mut hashes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let raw = random_bytes::<RECOVERY_CODE_BYTES>().map_err(AppError::internal)?;
        let b32 = base32(&raw);
        hashes.push(recovery_hash(user, &b32));
        let groups: Vec<&str> = (0..b32.len())
            .step_by(4)
            .filter_map(|i| b32.get(i..i + 4))
            .collect();
        shown.push(groups.join("-"));
    }
    Ok((shown, hashes))
}

// ---------------------------------------------------------------------------------------------
// Secrets at rest.

/// Seals a TOTP secret: under the tenant's data key, or the platform key for platform admins
/// (who have no tenant, and data keys belong to tenants).
async fn seal_secret(
    core: &Core,
    tenant: Option<&TenantId>,
    col: EncryptedColumn,
    user: &UserId,
    secret: &[u8],
) -> AppResult<String> {
    match tenant {
        Some(t) => {
            core.keyring
                .seal(t, &KeyOwner::Tenant, col, user.as_str(), secret)
                .await
        }
        None => core.keyring.seal_platform(col, user.as_str(), secret),
    }
}

async fn open_secret(
    core: &Core,
    tenant: Option<&TenantId>,
    col: EncryptedColumn,
    user: &UserId,
    stored: &str,
) -> AppResult<Zeroizing<Vec<u8>>> {
    match tenant {
        Some(t) => {
            core.keyring
                .open(&col.at(t.as_str(), user.as_str()), stored)
                .await
        }
        None => core.keyring.open_platform(col, user.as_str(), stored),
    }
}

// ---------------------------------------------------------------------------------------------
// Checking codes.

/// Which kind of second factor a code proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    Totp,
    RecoveryCode,
}

impl Factor {
    /// The sign-in method recorded on the session's `auth.login` record.
    pub fn login_method(self) -> &'static str {
        match self {
            Factor::Totp => "password+totp",
            Factor::RecoveryCode => "password+recovery_code",
        }
    }
}

/// Checks a TOTP or recovery code of a user with active MFA and spends it; `None` when it is
/// wrong, replayed, spent, or the user has no active second factor. The only place a code
/// guess is checked (each check counts in `kasho_credential_verifications_total`); callers
/// count the guess first (`service::guesses`).
async fn check_code(
    core: &Core,
    tenant: Option<&TenantId>,
    user: &UserId,
    code: &str,
) -> AppResult<Option<Factor>> {
    let code = normalise(code);
    let now = core.clock.now();
    if is_totp_shape(&code) {
        let Some(row) = core.store.totp(user).await? else {
            return Ok(None);
        };
        if row.tenant_id.as_deref() != tenant.map(|t| t.as_str()) {
            return Ok(None);
        }
        let Some(stored) = row.secret.as_deref() else {
            return Ok(None);
        };
        let secret = open_secret(core, tenant, MFA_TOTP_SECRET, user, stored).await?;
        core.verifications.record(CredentialKind::Totp);
        let Some(step) = matching_step(&secret, &code, now) else {
            return Ok(None);
        };
        // Only a step later than the last accepted one, atomically: a replay (or the same
        // code in a concurrent request) finds the step already taken.
        return Ok(core
            .store
            .accept_totp_step(user, step)
            .await?
            .then_some(Factor::Totp));
    }
    if code.len() == RECOVERY_CODE_BYTES * 8 / 5 {
        core.verifications.record(CredentialKind::RecoveryCode);
        let hash = recovery_hash(user, &code);
        return Ok(core
            .store
            .spend_recovery_code(user, &hash, now)
            .await?
            .then_some(Factor::RecoveryCode));
    }
    Ok(None)
}

/// Checks a second-factor code (a TOTP code or an unused recovery code) of a user with MFA,
/// spending it. `Ok(false)`: wrong, replayed or spent. The caller counts failures.
pub async fn verify_second_factor(
    core: &Core,
    _meta: &RequestMeta,
    tenant: Option<&TenantId>,
    user: &UserId,
    code: &str,
) -> AppResult<bool> {
    Ok(check_code(core, tenant, user, code).await?.is_some())
}

// ---------------------------------------------------------------------------------------------
// Sign-in.

/// Starts the second step of a sign-in for a user with MFA: answers an MFA token.
pub async fn begin_challenge(
    core: &Core,
    meta: &RequestMeta,
    user: &crate::store::UserRecord,
    tenant: Option<&TenantId>,
) -> Result<LoginResult, Audited> {
    let now = core.clock.now();
    let token = random_token().map_err(|e| Audited(AppError::internal(e)))?;
    // A customer's device facts are its personal data: its challenge keeps none (nothing reads
    // them; the session the code opens keeps them sealed under the customer's key, issue 14).
    let roles = crate::domain::authz::roles_from_storage(&user.roles);
    let customer = !roles.is_empty()
        && roles
            .iter()
            .all(|r| *r == crate::domain::authz::Role::Customer);
    let (ip, user_agent) = if customer {
        (None, None)
    } else {
        (meta.ip.clone(), meta.user_agent.clone())
    };
    let record = MfaChallengeRecord {
        token_hash: sha256_hex(token.as_bytes()),
        user_id: user.id.clone(),
        tenant_id: tenant.map(|t| t.to_string()),
        created_at: now.as_micros(),
        expires_at: now.plus_seconds(CHALLENGE_TTL_SECONDS).as_micros(),
        used_at: None,
        failures: 0,
        ip,
        user_agent,
    };
    let audit = AuditBuilder::new(core, meta, None);
    let ev = crate::domain::audit::NewAuditEvent {
        actor_type: crate::domain::audit::ActorType::User,
        actor_id: Some(user.id.clone()),
        ..audit.event(
            tenant,
            "auth.mfa_challenge",
            Some(("user", &user.id)),
            Outcome::Success,
            Some("password_verified"),
        )
    };
    core.store
        .create_mfa_challenge(&record, &[ev])
        .await
        .map_err(|e| Audited(e.into()))?;
    Ok(LoginResult::MfaRequired {
        mfa_token: SecretString::from(token),
        expires_in: CHALLENGE_TTL_SECONDS,
    })
}

/// Finishes a sign-in with the MFA token from `login` and a TOTP or recovery code.
pub async fn complete_login(
    core: &Core,
    meta: &RequestMeta,
    mfa_token: &SecretString,
    code: &str,
) -> Result<TokenPair, Audited> {
    use secrecy::ExposeSecret;
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, None);
    let hash = sha256_hex(mfa_token.expose_secret().as_bytes());
    let invalid = || {
        Audited(AppError::InvalidToken(
            "the MFA token is invalid or expired",
        ))
    };
    let challenge = core
        .store
        .mfa_challenge(&hash)
        .await
        .map_err(|e| Audited(e.into()))?;
    let live = challenge.filter(|c| {
        c.used_at.is_none() && c.expires_at > now.as_micros() && c.failures < CHALLENGE_MAX_FAILURES
    });
    let Some(challenge) = live else {
        security::record(
            core,
            audit.event(
                None,
                "auth.mfa",
                None,
                Outcome::Failure,
                Some("invalid_mfa_token"),
            ),
        )
        .await;
        return Err(invalid());
    };
    let tenant = challenge.tenant_id.clone().map(TenantId::from_trusted);
    let tenant = tenant.as_ref();
    let user_id = UserId::from_trusted(challenge.user_id.clone());
    let user = core
        .store
        .get_user(tenant, &user_id)
        .await
        .map_err(|e| Audited(e.into()))?
        .ok_or_else(invalid)?;
    let policy = security::policy(core, tenant).await.map_err(Audited)?;
    let email = super::users::email_of(core, &user).await.map_err(Audited)?;
    let key = security::account_key(core, tenant, &email);
    let failed = |reason: &str| {
        security::event(
            &audit,
            tenant,
            SecurityEvent::MfaFailed,
            "auth.mfa",
            Some(("user", user_id.as_str())),
            Outcome::Failure,
            Some(reason),
        )
    };
    // The code is counted before it is checked: against the challenge (its own cap, one
    // conditional update) and against the account's run, so concurrent codes cannot outrun
    // either.
    if !core
        .store
        .count_mfa_attempt(&hash, now, CHALLENGE_MAX_FAILURES)
        .await
        .map_err(|e| Audited(e.into()))?
    {
        security::record(core, failed("mfa_token_exhausted")).await;
        return Err(invalid());
    }
    let guess = match super::guesses::reserve(
        core,
        meta,
        tenant,
        vec![super::guesses::account_slot(key, &policy)],
    )
    .await
    {
        Ok(g) => g,
        Err(e) => {
            security::record(core, failed(e.code())).await;
            return Err(Audited(e));
        }
    };

    let factor = check_code(core, tenant, &user_id, code)
        .await
        .map_err(Audited)?;
    let Some(factor) = factor else {
        guess.failed(core, meta, failed("wrong_code")).await;
        return Err(Audited(AppError::InvalidMfaCode));
    };
    // The code was right: a refusal from here on is not a failed guess.
    let refuse = |guess: super::guesses::Guess, reason: &'static str, err: Audited| async move {
        if let Err(e) = guess.refund(core).await {
            return Audited(e);
        }
        security::record(core, failed(reason)).await;
        err
    };
    // This attempt was counted on the challenge already: it may be the last one allowed.
    if !core
        .store
        .consume_mfa_challenge(&hash, now, CHALLENGE_MAX_FAILURES + 1)
        .await
        .map_err(|e| Audited(e.into()))?
    {
        return Err(refuse(guess, "mfa_token_raced", invalid()).await);
    }
    if user.status != "active" {
        return Err(refuse(
            guess,
            "account_disabled",
            Audited(AppError::AccountUnavailable {
                code: "account_disabled",
                message: "this account is disabled".into(),
            }),
        )
        .await);
    }
    if let Some(t) = tenant {
        let active = core
            .store
            .get_tenant(t)
            .await
            .map_err(|e| Audited(e.into()))?
            .is_some_and(|t| t.status == "active");
        if !active {
            return Err(refuse(
                guess,
                "tenant_suspended",
                Audited(AppError::AccountUnavailable {
                    code: "tenant_suspended",
                    message: "this tenant is suspended".into(),
                }),
            )
            .await);
        }
    }
    // Every factor is proven: the run of failures ends.
    guess.succeeded(core).await.map_err(Audited)?;
    super::auth::issue_session(core, meta, &user, tenant, &policy, factor.login_method())
        .await
        .map_err(Audited)
}

// ---------------------------------------------------------------------------------------------
// Enrolment and management (the signed-in user's own second factor).

/// What starting an enrolment answers: everything an authenticator app needs.
pub struct Enrolment {
    /// Base32, for typing into an app.
    pub secret: SecretString,
    pub otpauth_uri: SecretString,
    /// The URI as a QR code (an SVG `data:` URI).
    pub qr_code: SecretString,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Recovery codes, shown once.
pub struct RecoveryCodes(pub Vec<String>);

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodes([{} REDACTED])", self.0.len())
    }
}

/// A user's MFA state.
#[derive(Debug, Clone)]
pub struct MfaStatus {
    pub enabled: bool,
    pub enabled_at: Option<Timestamp>,
    pub recovery_codes_remaining: i64,
    /// An enrolment was started and awaits its confirming code.
    pub enrolment_pending: bool,
    /// The user's role requires MFA (so it cannot be disabled).
    pub required: bool,
}

fn not_enabled() -> AppError {
    AppError::Conflict {
        code: "mfa_not_enabled",
        param: None,
        message: "multi-factor authentication is not enabled on this account".into(),
    }
}

/// Starts (or restarts) a TOTP enrolment. Replacing an active authenticator needs step-up.
pub async fn start_enrolment(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
) -> AppResult<Enrolment> {
    actor.require_session()?;
    let tenant = actor.tenant_id.as_ref();
    let user = core
        .store
        .get_user(tenant, &actor.user_id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    // Enrolling a first factor or replacing one needs a recent authentication: a stolen
    // access token alone cannot bind the thief's authenticator to the account.
    security::require_step_up(core, meta, actor).await?;
    let issuer = match tenant {
        Some(t) => core
            .store
            .get_tenant(t)
            .await?
            .map_or_else(|| "Kasho".to_owned(), |t| t.name),
        None => "Kasho".to_owned(),
    };
    let raw = Zeroizing::new(random_bytes::<SECRET_BYTES>().map_err(AppError::internal)?);
    let secret = Zeroizing::new(base32(raw.as_slice()));
    let email = Zeroizing::new(super::users::email_of(core, &user).await?);
    let uri = Zeroizing::new(otpauth_uri(&issuer, &email, &secret));
    let qr = qr_svg_data_uri(&uri)?;
    let sealed = seal_secret(
        core,
        tenant,
        MFA_TOTP_PENDING_SECRET,
        &actor.user_id,
        raw.as_slice(),
    )
    .await?;
    let now = core.clock.now();
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "mfa.enrol",
        Some(("user", actor.user_id.as_str())),
        Outcome::Success,
        Some(if user.mfa_enabled != 0 {
            "replacing_authenticator"
        } else {
            "first_authenticator"
        }),
    );
    core.store
        .start_totp_enrolment(tenant, &actor.user_id, &sealed, now, &[ev])
        .await?;
    Ok(Enrolment {
        secret: SecretString::from(secret.to_string()),
        otpauth_uri: SecretString::from(uri.to_string()),
        qr_code: SecretString::from(qr),
        expires_at: now.plus_seconds(ENROLMENT_TTL_SECONDS),
    })
}

/// Confirms an enrolment with a current code: MFA is on and 10 recovery codes are issued.
pub async fn confirm_enrolment(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    code: &str,
) -> AppResult<RecoveryCodes> {
    actor.require_session()?;
    let tenant = actor.tenant_id.as_ref();
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, Some(actor));
    let row = core.store.totp(&actor.user_id).await?;
    let pending = row.as_ref().and_then(|r| {
        r.pending_secret
            .clone()
            .zip(r.pending_created_at)
            .filter(|_| r.tenant_id.as_deref() == tenant.map(|t| t.as_str()))
    });
    let Some((pending, created)) = pending else {
        return Err(AppError::Conflict {
            code: "mfa_enrolment_missing",
            param: None,
            message: "no enrolment is in progress; start one with POST /v1/me/mfa/totp".into(),
        });
    };
    if Timestamp::from_micros(created).plus_seconds(ENROLMENT_TTL_SECONDS) <= now {
        return Err(AppError::Conflict {
            code: "mfa_enrolment_expired",
            param: None,
            message: "the enrolment expired; start again with POST /v1/me/mfa/totp".into(),
        });
    }
    let secret = open_secret(
        core,
        tenant,
        MFA_TOTP_PENDING_SECRET,
        &actor.user_id,
        &pending,
    )
    .await?;
    let code = normalise(code);
    let step = is_totp_shape(&code)
        .then(|| matching_step(&secret, &code, now))
        .flatten();
    let Some(step) = step else {
        security::record(
            core,
            security::event(
                &audit,
                tenant,
                SecurityEvent::MfaFailed,
                "mfa.confirm",
                Some(("user", actor.user_id.as_str())),
                Outcome::Failure,
                Some("wrong_code"),
            ),
        )
        .await;
        return Err(AppError::Invalid {
            code: "invalid_mfa_code",
            param: Some("code".into()),
            message: "the code does not match the authenticator being enrolled; check the device's clock and give the current code".into(),
        });
    };
    let (shown, hashes) = new_recovery_codes(&actor.user_id)?;
    let active = seal_secret(core, tenant, MFA_TOTP_SECRET, &actor.user_id, &secret).await?;
    let ev = audit.own(
        "mfa.confirm",
        Some(("user", actor.user_id.as_str())),
        Outcome::Success,
        None,
    );
    let confirmed = core
        .session_cache
        .after(core.store.confirm_totp(
            &TotpConfirmation {
                tenant,
                user: &actor.user_id,
                pending_secret: &pending,
                secret: &active,
                step,
                recovery_hashes: &hashes,
                now,
            },
            &[ev],
        ))
        .await?;
    if !confirmed {
        return Err(AppError::Conflict {
            code: "mfa_enrolment_changed",
            param: None,
            message: "the enrolment was restarted meanwhile; confirm the newest one".into(),
        });
    }
    // A new factor ends every other session of the user: whoever else held one (a stolen
    // token) must now pass the new factor.
    core.session_cache
        .after(core.store.revoke_user_sessions(
            tenant,
            &actor.user_id,
            None,
            actor.session_id(),
            "mfa_enrolled",
            now,
            &[],
        ))
        .await?;
    Ok(RecoveryCodes(shown))
}

/// The caller's MFA state.
pub async fn status(core: &Core, actor: &Principal) -> AppResult<MfaStatus> {
    let tenant = actor.tenant_id.as_ref();
    let policy = security::policy(core, tenant).await?;
    let row = core
        .store
        .totp(&actor.user_id)
        .await?
        .filter(|r| r.tenant_id.as_deref() == tenant.map(|t| t.as_str()));
    let enabled = row.as_ref().is_some_and(|r| r.secret.is_some());
    let now = core.clock.now();
    Ok(MfaStatus {
        enabled,
        enabled_at: row
            .as_ref()
            .and_then(|r| r.enabled_at)
            .map(Timestamp::from_micros),
        recovery_codes_remaining: if enabled {
            core.store.recovery_codes_remaining(&actor.user_id).await?
        } else {
            0
        },
        enrolment_pending: row
            .as_ref()
            .and_then(|r| r.pending_created_at)
            .is_some_and(|c| Timestamp::from_micros(c).plus_seconds(ENROLMENT_TTL_SECONDS) > now),
        required: policy.mfa_required_for(&actor.roles),
    })
}

/// Turns MFA off (needs step-up). Refused when the user's role requires MFA.
pub async fn disable(core: &Core, meta: &RequestMeta, actor: &Principal) -> AppResult<()> {
    actor.require_session()?;
    let tenant = actor.tenant_id.as_ref();
    let policy = security::policy(core, tenant).await?;
    if policy.mfa_required_for(&actor.roles) {
        return Err(AppError::Forbidden {
            code: "mfa_required_by_policy",
            message: "your role must use multi-factor authentication: it cannot be disabled (enrol a new authenticator instead)".into(),
        });
    }
    security::require_step_up(core, meta, actor).await?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "mfa.disable",
        Some(("user", actor.user_id.as_str())),
        Outcome::Success,
        None,
    );
    if !core
        .session_cache
        .after(core.store.disable_mfa(
            tenant,
            &actor.user_id,
            core.clock.now(),
            Some(&actor.actor_check()),
            &[ev],
        ))
        .await?
    {
        return Err(not_enabled());
    }
    Ok(())
}

/// Replaces the caller's recovery codes with 10 new ones (needs step-up).
pub async fn regenerate_recovery_codes(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
) -> AppResult<RecoveryCodes> {
    actor.require_session()?;
    security::require_step_up(core, meta, actor).await?;
    let (shown, hashes) = new_recovery_codes(&actor.user_id)?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "mfa.recovery_codes.regenerate",
        Some(("user", actor.user_id.as_str())),
        Outcome::Success,
        None,
    );
    if !core
        .store
        .replace_recovery_codes(
            actor.tenant_id.as_ref(),
            &actor.user_id,
            &hashes,
            core.clock.now(),
            &[ev],
        )
        .await?
    {
        return Err(not_enabled());
    }
    Ok(RecoveryCodes(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 key "12345678901234567890", last 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let key = b"12345678901234567890";
        for (t, want) in [
            (59i64, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            let step = step_at(Timestamp::from_unix_seconds(t));
            assert_eq!(totp_code(key, step), want, "t={t}");
        }
    }

    #[test]
    fn current_and_previous_step_only() {
        let key = b"12345678901234567890";
        let now = Timestamp::from_unix_seconds(1_111_111_111);
        let cur = step_at(now);
        assert_eq!(matching_step(key, &totp_code(key, cur), now), Some(cur));
        assert_eq!(
            matching_step(key, &totp_code(key, cur - 1), now),
            Some(cur - 1)
        );
        assert_eq!(matching_step(key, &totp_code(key, cur - 2), now), None);
        assert_eq!(matching_step(key, &totp_code(key, cur + 1), now), None);
    }

    #[test]
    fn base32_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(&[0u8; 20]).len(), 32);
    }

    #[test]
    fn uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri("acme Ltd", "a+b@acme.test", "ABC");
        assert_eq!(
            uri,
            "otpauth://totp/acme%20Ltd:a%2Bb%40acme.test?secret=ABC&issuer=acme%20Ltd&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalise() {
        let user = UserId::from_trusted("usr_1".into());
        let (shown, hashes) = new_recovery_codes(&user).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(shown.len(), RECOVERY_CODES);
        assert_eq!(shown[0].len(), 19);
        let mut uniq = hashes.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), RECOVERY_CODES);
        let typed = shown[0].to_lowercase().replace('-', " ");
        assert_eq!(recovery_hash(&user, &normalise(&typed)), hashes[0]);
    }

    #[test]
    fn qr_is_an_svg_data_uri() {
        let uri = qr_svg_data_uri("otpauth://totp/x:y?secret=ABC")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(uri.starts_with("data:image/svg+xml;base64,"));
    }
}
