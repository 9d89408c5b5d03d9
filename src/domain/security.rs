//! Account security: each tenant's security policy (within the bounds the standards set), the
//! typed security events the audit chain carries, and address lists (CIDR).
//!
//! The policy is stored per tenant as one JSON document; a tenant that never changed it gets
//! [`SecurityPolicy::default`]. Every figure is checked against its bounds when set, so no
//! tenant can configure itself below PCI DSS or NIST (a lockout of 100 attempts, a 4-character
//! password).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::authz::Role;

/// How serious a security event is (for filtering and, later, alerting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Severity::Low, Severity::Medium, Severity::High]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// A typed security event. Each is recorded as an audit record whose `security_event` column
/// names its type, in the chain of the tenant concerned (the platform chain otherwise), so
/// security events are as tamper-evident as the rest of the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecurityEvent {
    /// A sign-in with a wrong password, an unknown account or a locked account.
    LoginFailed,
    /// An account (or an unknown email) reached the failure threshold and is locked.
    AccountLocked,
    /// An address exceeded the failed-login budget across accounts.
    LoginThrottled,
    /// A spent refresh token was presented again; the session was revoked.
    RefreshTokenReused,
    /// An access token or API token was refused (forged, expired, revoked).
    TokenRejected,
    /// A wrong TOTP or recovery code, or a replayed one.
    MfaFailed,
    /// A re-authentication for a sensitive action failed.
    StepUpFailed,
    /// A sensitive action was attempted without a recent authentication.
    StepUpRequired,
    /// The role table (or a token's scopes) refused a request.
    AuthorizationRefused,
    /// A signed request whose signature did not verify, or an unsigned one where signing is
    /// required.
    SignatureInvalid,
    /// A signed request replayed (its nonce seen before) or outside the time window.
    RequestReplayed,
    /// A request from an address outside an allow-list.
    IpRefused,
    /// A password reset was requested (whether or not the account exists).
    PasswordResetRequested,
    /// A reset token that is unknown, expired or spent was presented.
    PasswordResetFailed,
    /// The shared rate-limit backend (Redis) failed; each instance limits on its own until it
    /// answers again (platform-level, no tenant).
    RateLimitBackendUnavailable,
    /// The shared rate-limit backend answers again (platform-level).
    RateLimitBackendRestored,
    /// A client address was banned: a burst of 401/403/404 answers or a scanner path
    /// (platform-level).
    IntrusionBan,
    /// A credential spent its budget of refused money movements; its movements answer 429 for
    /// the rest of the window.
    RefusalBudgetExhausted,
    /// A user manager reset another user's second factor.
    MfaReset,
    /// A user holds two roles that may not be held together (found at start-up, for users who
    /// held them before the rule): flagged until a manager removes one.
    ForbiddenRolePair,
    /// A grant or a decision was refused for segregation of duties (a forbidden pair of
    /// roles; a KYC decision by someone the submitter recently invited or granted roles).
    SegregationOfDutiesRefused,
    /// An invitation link was issued at the console (`kasho admin invitation-link`) instead
    /// of being mailed.
    InvitationLinkIssued,
    /// A platform admin asked to restore a tenant's administration (break-glass).
    BreakGlassRequested,
    /// A second platform admin approved a break-glass request: a new MANAGER is invited.
    BreakGlassApproved,
    /// A credential without `customers:read_pii` spent its budget of searches by personal
    /// data; its searches answer 429 for the rest of the window.
    SearchBudgetExhausted,
}

impl SecurityEvent {
    pub const ALL: [SecurityEvent; 25] = [
        SecurityEvent::LoginFailed,
        SecurityEvent::AccountLocked,
        SecurityEvent::LoginThrottled,
        SecurityEvent::RefreshTokenReused,
        SecurityEvent::TokenRejected,
        SecurityEvent::MfaFailed,
        SecurityEvent::StepUpFailed,
        SecurityEvent::StepUpRequired,
        SecurityEvent::AuthorizationRefused,
        SecurityEvent::SignatureInvalid,
        SecurityEvent::RequestReplayed,
        SecurityEvent::IpRefused,
        SecurityEvent::PasswordResetRequested,
        SecurityEvent::PasswordResetFailed,
        SecurityEvent::RateLimitBackendUnavailable,
        SecurityEvent::RateLimitBackendRestored,
        SecurityEvent::IntrusionBan,
        SecurityEvent::RefusalBudgetExhausted,
        SecurityEvent::MfaReset,
        SecurityEvent::ForbiddenRolePair,
        SecurityEvent::SegregationOfDutiesRefused,
        SecurityEvent::InvitationLinkIssued,
        SecurityEvent::BreakGlassRequested,
        SecurityEvent::BreakGlassApproved,
        SecurityEvent::SearchBudgetExhausted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SecurityEvent::LoginFailed => "login_failed",
            SecurityEvent::AccountLocked => "account_locked",
            SecurityEvent::LoginThrottled => "login_throttled",
            SecurityEvent::RefreshTokenReused => "refresh_token_reused",
            SecurityEvent::TokenRejected => "token_rejected",
            SecurityEvent::MfaFailed => "mfa_failed",
            SecurityEvent::StepUpFailed => "step_up_failed",
            SecurityEvent::StepUpRequired => "step_up_required",
            SecurityEvent::AuthorizationRefused => "authorization_refused",
            SecurityEvent::SignatureInvalid => "signature_invalid",
            SecurityEvent::RequestReplayed => "request_replayed",
            SecurityEvent::IpRefused => "ip_refused",
            SecurityEvent::PasswordResetRequested => "password_reset_requested",
            SecurityEvent::PasswordResetFailed => "password_reset_failed",
            SecurityEvent::RateLimitBackendUnavailable => "rate_limit_backend_unavailable",
            SecurityEvent::RateLimitBackendRestored => "rate_limit_backend_restored",
            SecurityEvent::IntrusionBan => "intrusion_ban",
            SecurityEvent::RefusalBudgetExhausted => "refusal_budget_exhausted",
            SecurityEvent::MfaReset => "mfa_reset",
            SecurityEvent::ForbiddenRolePair => "forbidden_role_pair",
            SecurityEvent::SegregationOfDutiesRefused => "segregation_of_duties_refused",
            SecurityEvent::InvitationLinkIssued => "invitation_link_issued",
            SecurityEvent::BreakGlassRequested => "break_glass_requested",
            SecurityEvent::BreakGlassApproved => "break_glass_approved",
            SecurityEvent::SearchBudgetExhausted => "search_budget_exhausted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    pub const fn severity(self) -> Severity {
        match self {
            SecurityEvent::AccountLocked
            | SecurityEvent::RefreshTokenReused
            | SecurityEvent::RequestReplayed
            | SecurityEvent::LoginThrottled
            | SecurityEvent::RateLimitBackendUnavailable
            | SecurityEvent::IntrusionBan
            | SecurityEvent::RefusalBudgetExhausted
            | SecurityEvent::MfaReset
            | SecurityEvent::ForbiddenRolePair
            | SecurityEvent::InvitationLinkIssued
            | SecurityEvent::BreakGlassRequested
            | SecurityEvent::BreakGlassApproved
            | SecurityEvent::SearchBudgetExhausted => Severity::High,
            SecurityEvent::MfaFailed
            | SecurityEvent::StepUpFailed
            | SecurityEvent::AuthorizationRefused
            | SecurityEvent::SignatureInvalid
            | SecurityEvent::IpRefused
            | SecurityEvent::PasswordResetFailed
            | SecurityEvent::SegregationOfDutiesRefused => Severity::Medium,
            SecurityEvent::LoginFailed
            | SecurityEvent::TokenRejected
            | SecurityEvent::StepUpRequired
            | SecurityEvent::PasswordResetRequested
            | SecurityEvent::RateLimitBackendRestored => Severity::Low,
        }
    }

    /// The types at or above `min`.
    pub fn at_least(min: Severity) -> Vec<SecurityEvent> {
        Self::ALL
            .into_iter()
            .filter(|e| e.severity() >= min)
            .collect()
    }
}

impl fmt::Display for SecurityEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv4 or IPv6 network in CIDR notation (`203.0.113.0/24`, `2001:db8::/32`); a bare
/// address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// The widest IPv4 network a trust list may name (`trusted_proxies`, `intrusion_exempt`): /8.
pub const WIDEST_TRUSTED_V4_PREFIX: u8 = 8;
/// The widest IPv6 network a trust list may name: /16.
pub const WIDEST_TRUSTED_V6_PREFIX: u8 = 16;

impl Cidr {
    /// Whether the network is too wide to trust: shorter than /8 (IPv4) or /16 (IPv6). No
    /// proxy tier or operator network spans that much address space, and a range that wide
    /// holds addresses anyone on the internet can send from (`0.0.0.0/0`, `::/0`), so
    /// trusting it makes every client address forgeable (or every client unbannable).
    pub fn is_too_wide(&self) -> bool {
        match self.addr {
            IpAddr::V4(_) => self.prefix < WIDEST_TRUSTED_V4_PREFIX,
            IpAddr::V6(_) => self.prefix < WIDEST_TRUSTED_V6_PREFIX,
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        // An IPv4-mapped IPv6 address (`::ffff:203.0.113.7`) is the IPv4 address it maps.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(*v6), IpAddr::V4),
            v4 => *v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an IP address or CIDR network");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A browser origin a tenant allows to call the API cross-origin: exactly
/// `https://host[:port]` (`http://` only for `localhost` and `127.0.0.1`), lower-case, without
/// the scheme's default port, so it compares byte for byte with the `Origin` header browsers
/// send. Never `*` or `null`, never a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CorsOrigin(String);

impl CorsOrigin {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses and normalises an origin; the error says what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        const SHAPE: &str = "an origin is `https://host[:port]` (http:// only for localhost)";
        if raw == "*" || raw.eq_ignore_ascii_case("null") {
            return Err(format!(
                "wildcard and `null` origins are never allowed; {SHAPE}"
            ));
        }
        if raw.len() > 253 + 16 {
            return Err(format!("too long; {SHAPE}"));
        }
        let lower = raw.to_ascii_lowercase();
        let (scheme, rest) = lower
            .split_once("://")
            .ok_or_else(|| format!("missing scheme; {SHAPE}"))?;
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*', ' ', '\\']) {
            return Err(format!("no path, query, credentials or wildcard; {SHAPE}"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port; {SHAPE}"))?;
                (h, Some(port))
            }
            None => (rest, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!("`{host}` is not a host name; {SHAPE}"));
        }
        let default_port = match scheme {
            "https" => 443,
            "http" if host == "localhost" || host == "127.0.0.1" => 80,
            "http" => return Err(format!("http:// is only allowed for localhost; {SHAPE}")),
            _ => return Err(format!("scheme must be https; {SHAPE}")),
        };
        Ok(Self(match port {
            Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
            _ => format!("{scheme}://{host}"),
        }))
    }
}

impl fmt::Display for CorsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for CorsOrigin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CorsOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether `ip` falls in any of `list`. An empty list allows every address.
pub fn allowed(list: &[Cidr], ip: Option<&IpAddr>) -> bool {
    list.is_empty() || ip.is_some_and(|ip| list.iter().any(|c| c.contains(ip)))
}

/// Seconds to wait after the `guesses`-th credential guess of a run before the next one may be
/// checked: none after the first two, then 1, 2, 4, … up to 30. Storage applies it in the same
/// atomic step that counts the guess (`store::security`), so a burst cannot outrun it.
pub fn progressive_delay_seconds(guesses: i64) -> i64 {
    if guesses < 3 {
        0
    } else {
        let exp = u32::try_from(guesses - 3).unwrap_or(u32::MAX).min(5);
        (1i64 << exp).min(30)
    }
}

/// The guess count from which [`progressive_delay_seconds`] no longer grows.
pub const PROGRESSIVE_DELAY_SATURATES_AT: i64 = 8;

/// The bounds a tenant's policy must stay within.
pub mod bounds {
    /// NIST 800-63B: at least 8; the default is 12.
    pub const PASSWORD_MIN_LENGTH: (u32, u32) = (8, 64);
    /// At least 128 must be accepted (passphrases).
    pub const PASSWORD_MAX_LENGTH: (u32, u32) = (128, 1024);
    /// Not one of the last 4, at least.
    pub const PASSWORD_HISTORY: (u32, u32) = (4, 24);
    /// PCI DSS 8.3.4: lock after at most 10 failures.
    pub const LOCKOUT_THRESHOLD: (u32, u32) = (3, 10);
    /// PCI DSS 8.3.4: locked for at least 30 minutes.
    pub const LOCKOUT_MINUTES: (u32, u32) = (30, 1440);
    /// Re-authentication within at most 10 minutes for sensitive actions.
    pub const STEP_UP_SECONDS: (u32, u32) = (60, 600);
    /// Idle timeout of a session: 5 minutes up to the absolute lifetime.
    pub const SESSION_IDLE_SECONDS: (u32, u32) = (300, 2_592_000);
    /// Absolute lifetime of a session: 1 hour to 30 days.
    pub const SESSION_ABSOLUTE_SECONDS: (u32, u32) = (3_600, 2_592_000);
    /// At most 1,000 entries per allow-list.
    pub const MAX_ALLOWED_IPS: usize = 1_000;
    /// At most 20 CORS origins per tenant.
    pub const MAX_CORS_ORIGINS: usize = 20;
    /// Six tenant roles make 15 pairs.
    pub const MAX_FORBIDDEN_ROLE_PAIRS: usize = 15;
}

/// A tenant's security policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityPolicy {
    pub password_min_length: u32,
    pub password_max_length: u32,
    /// A new password may not be any of the last this many.
    pub password_history: u32,
    /// Consecutive failed sign-ins that lock an account.
    pub lockout_threshold: u32,
    pub lockout_minutes: u32,
    /// Roles whose holders must use MFA: until they enrol they can do nothing else.
    pub mfa_required_roles: Vec<Role>,
    /// How recent an authentication must be for a sensitive action.
    pub step_up_max_age_seconds: u32,
    /// Transfers strictly above these amounts (minor units, per currency) need step-up.
    pub step_up_transfer_threshold: BTreeMap<String, i64>,
    /// A session unused for this long ends.
    pub session_idle_timeout_seconds: u32,
    /// A session ends this long after sign-in, however active.
    pub session_absolute_lifetime_seconds: u32,
    /// Addresses API-token requests (and, with `staff_login_ip_allowlist`, staff sign-ins)
    /// must come from. Empty: any.
    pub allowed_ips: Vec<Cidr>,
    /// Apply `allowed_ips` to sign-ins of staff (every role but CUSTOMER).
    pub staff_login_ip_allowlist: bool,
    /// API-token requests must carry a valid `Kasho-Signature`.
    pub require_signed_requests: bool,
    /// Browser origins allowed to call the API cross-origin (CORS). Empty: none.
    pub cors_allowed_origins: Vec<CorsOrigin>,
    /// Pairs of roles no user of the tenant may hold together. Always lists
    /// `authz::ALWAYS_FORBIDDEN_PAIRS` (MANAGER with COMPLIANCE_OFFICER); a tenant may add more.
    pub forbidden_role_pairs: Vec<[Role; 2]>,
}

impl Default for SecurityPolicy {
    fn default() -> Self {
        Self {
            password_min_length: 12,
            password_max_length: 128,
            password_history: 4,
            lockout_threshold: 10,
            lockout_minutes: 30,
            mfa_required_roles: vec![Role::Manager, Role::ComplianceOfficer, Role::PlatformAdmin],
            step_up_max_age_seconds: 600,
            step_up_transfer_threshold: BTreeMap::new(),
            session_idle_timeout_seconds: 3_600,
            session_absolute_lifetime_seconds: 2_592_000,
            allowed_ips: Vec::new(),
            staff_login_ip_allowlist: false,
            require_signed_requests: false,
            cors_allowed_origins: Vec::new(),
            forbidden_role_pairs: super::authz::ALWAYS_FORBIDDEN_PAIRS
                .iter()
                .map(|(a, b)| [*a, *b])
                .collect(),
        }
    }
}

/// A policy rule that was broken: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub param: &'static str,
    pub message: String,
}

impl SecurityPolicy {
    /// Checks every figure against its bounds.
    pub fn validate(&self) -> Result<(), PolicyError> {
        fn within(param: &'static str, v: u32, (lo, hi): (u32, u32)) -> Result<(), PolicyError> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(PolicyError {
                    param,
                    message: format!("`{param}` must be between {lo} and {hi}"),
                })
            }
        }
        use bounds::*;
        within(
            "password_min_length",
            self.password_min_length,
            PASSWORD_MIN_LENGTH,
        )?;
        within(
            "password_max_length",
            self.password_max_length,
            PASSWORD_MAX_LENGTH,
        )?;
        within("password_history", self.password_history, PASSWORD_HISTORY)?;
        within(
            "lockout_threshold",
            self.lockout_threshold,
            LOCKOUT_THRESHOLD,
        )?;
        within("lockout_minutes", self.lockout_minutes, LOCKOUT_MINUTES)?;
        within(
            "step_up_max_age_seconds",
            self.step_up_max_age_seconds,
            STEP_UP_SECONDS,
        )?;
        within(
            "session_idle_timeout_seconds",
            self.session_idle_timeout_seconds,
            SESSION_IDLE_SECONDS,
        )?;
        within(
            "session_absolute_lifetime_seconds",
            self.session_absolute_lifetime_seconds,
            SESSION_ABSOLUTE_SECONDS,
        )?;
        if self.session_idle_timeout_seconds > self.session_absolute_lifetime_seconds {
            return Err(PolicyError {
                param: "session_idle_timeout_seconds",
                message: "the idle timeout cannot exceed the absolute lifetime".into(),
            });
        }
        if self.allowed_ips.len() > MAX_ALLOWED_IPS {
            return Err(PolicyError {
                param: "allowed_ips",
                message: format!("at most {MAX_ALLOWED_IPS} entries"),
            });
        }
        if self.cors_allowed_origins.len() > MAX_CORS_ORIGINS {
            return Err(PolicyError {
                param: "cors_allowed_origins",
                message: format!("at most {MAX_CORS_ORIGINS} origins"),
            });
        }
        self.validate_role_pairs()?;
        for (currency, amount) in &self.step_up_transfer_threshold {
            if crate::domain::currency::Currency::parse(currency).is_err() {
                return Err(PolicyError {
                    param: "step_up_transfer_threshold",
                    message: format!("`{currency}` is not an ISO 4217 currency code"),
                });
            }
            if *amount < 0 {
                return Err(PolicyError {
                    param: "step_up_transfer_threshold",
                    message: "thresholds are non-negative amounts in minor units".into(),
                });
            }
        }
        Ok(())
    }

    fn validate_role_pairs(&self) -> Result<(), PolicyError> {
        let refuse = |message: String| PolicyError {
            param: "forbidden_role_pairs",
            message,
        };
        let max = bounds::MAX_FORBIDDEN_ROLE_PAIRS;
        if self.forbidden_role_pairs.len() > max {
            return Err(refuse(format!("at most {max} pairs")));
        }
        for [a, b] in &self.forbidden_role_pairs {
            if a == b || a.is_platform() || b.is_platform() {
                return Err(refuse(format!(
                    "`[{a}, {b}]` is not a pair of two different tenant roles"
                )));
            }
        }
        for (a, b) in super::authz::ALWAYS_FORBIDDEN_PAIRS {
            let listed = self
                .forbidden_role_pairs
                .iter()
                .any(|p| *p == [*a, *b] || *p == [*b, *a]);
            if !listed {
                return Err(refuse(format!(
                    "{a} and {b} may never be held together: keep the pair `[{a}, {b}]`"
                )));
            }
        }
        Ok(())
    }

    /// The first pair of `roles` this policy forbids, if any.
    pub fn forbidden_pair(&self, roles: &[Role]) -> Option<(Role, Role)> {
        super::authz::forbidden_pair(roles, &self.forbidden_role_pairs)
    }

    /// Whether a holder of `roles` must use MFA.
    pub fn mfa_required_for(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.mfa_required_roles.contains(r))
    }

    /// Whether a caller holding `roles` may act from `ip` (the client address as
    /// `trusted_proxies` resolves it): with `staff_login_ip_allowlist`, every role but CUSTOMER
    /// must come from `allowed_ips`, at sign-in, on every request and at refresh alike. A
    /// customer, or a policy without the switch, is not confined.
    pub fn admits_address(&self, roles: &[Role], ip: Option<&IpAddr>) -> bool {
        !self.staff_login_ip_allowlist
            || !roles.iter().any(|r| *r != Role::Customer)
            || allowed(&self.allowed_ips, ip)
    }

    /// Whether moving `amount` of `currency` needs a recent authentication.
    pub fn transfer_needs_step_up(&self, currency: &str, amount: i64) -> bool {
        self.step_up_transfer_threshold
            .get(currency)
            .is_some_and(|limit| amount > *limit)
    }

    /// Parses a stored policy; no document means `default`, and a document that no longer
    /// parses or validates falls back to the reference defaults (the strict ones), never to
    /// something weaker.
    pub fn from_storage(json: Option<&str>, default: &SecurityPolicy) -> Self {
        match json {
            None => default.clone(),
            Some(j) => serde_json::from_str::<Self>(j)
                .ok()
                .filter(|p| p.validate().is_ok())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn cidr_membership() {
        let net: Cidr = cidr("203.0.113.0/24");
        assert!(net.contains(&ip("203.0.113.7")));
        assert!(!net.contains(&ip("203.0.114.7")));
        assert!(net.contains(&ip("::ffff:203.0.113.9")));
        let one: Cidr = cidr("198.51.100.1");
        assert!(one.contains(&ip("198.51.100.1")));
        assert!(!one.contains(&ip("198.51.100.2")));
        let v6: Cidr = cidr("2001:db8::/32");
        assert!(v6.contains(&ip("2001:db8:1::1")));
        assert!(!v6.contains(&ip("203.0.113.7")));
        let all: Cidr = cidr("0.0.0.0/0");
        assert!(all.contains(&ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!(allowed(&[], None));
        assert!(!allowed(&[net], None));
    }

    #[test]
    fn policy_defaults_are_the_reference_figures_and_bounds_hold() {
        let p = SecurityPolicy::default();
        assert!(p.validate().is_ok());
        assert_eq!((p.password_min_length, p.lockout_threshold), (12, 10));
        assert!(p.mfa_required_for(&[Role::Manager]));
        assert!(!p.mfa_required_for(&[Role::Cashier, Role::Customer]));
        let weak = SecurityPolicy {
            lockout_threshold: 11,
            ..p.clone()
        };
        assert_eq!(
            weak.validate().map_err(|e| e.param),
            Err("lockout_threshold")
        );
        let short = SecurityPolicy {
            lockout_minutes: 10,
            ..p.clone()
        };
        assert!(short.validate().is_err());
        let thresholds = SecurityPolicy {
            step_up_transfer_threshold: [("USD".to_owned(), 100_000)].into(),
            ..p
        };
        assert!(thresholds.transfer_needs_step_up("USD", 100_001));
        assert!(!thresholds.transfer_needs_step_up("USD", 100_000));
        assert!(!thresholds.transfer_needs_step_up("NGN", i64::MAX));
        // A corrupted stored policy means the defaults, not something weaker.
        assert_eq!(
            SecurityPolicy::from_storage(
                Some(r#"{"lockout_threshold": 1000}"#),
                &SecurityPolicy {
                    mfa_required_roles: vec![],
                    ..SecurityPolicy::default()
                }
            ),
            SecurityPolicy::default()
        );
    }

    #[test]
    fn the_manager_and_compliance_officer_pair_cannot_be_dropped() {
        let p = SecurityPolicy::default();
        assert_eq!(
            p.forbidden_pair(&[Role::ComplianceOfficer, Role::Manager]),
            Some((Role::Manager, Role::ComplianceOfficer))
        );
        let dropped = SecurityPolicy {
            forbidden_role_pairs: vec![],
            ..p.clone()
        };
        assert_eq!(
            dropped.validate().map_err(|e| e.param),
            Err("forbidden_role_pairs")
        );
        // Even a policy that somehow lacks it forbids the pair.
        assert!(
            dropped
                .forbidden_pair(&[Role::Manager, Role::ComplianceOfficer])
                .is_some()
        );
        let more = SecurityPolicy {
            forbidden_role_pairs: vec![
                [Role::ComplianceOfficer, Role::Manager],
                [Role::Cashier, Role::Auditor],
            ],
            ..p.clone()
        };
        assert!(more.validate().is_ok());
        assert!(
            more.forbidden_pair(&[Role::Auditor, Role::Cashier])
                .is_some()
        );
        for bad in [
            [Role::Cashier, Role::Cashier],
            [Role::PlatformAdmin, Role::Cashier],
        ] {
            let p = SecurityPolicy {
                forbidden_role_pairs: vec![[Role::Manager, Role::ComplianceOfficer], bad],
                ..p.clone()
            };
            assert!(p.validate().is_err(), "{bad:?}");
        }
        // Stored documents from before the field exist get the rule.
        let old: SecurityPolicy =
            serde_json::from_str(r#"{"password_min_length": 14}"#).unwrap_or_default();
        assert_eq!(old.forbidden_role_pairs, p.forbidden_role_pairs);
    }

    #[test]
    fn cors_origins_are_exact_and_normalised() {
        let ok = |s: &str| CorsOrigin::parse(s).map(|o| o.to_string());
        assert_eq!(
            ok("https://App.Example.com").as_deref(),
            Ok("https://app.example.com")
        );
        assert_eq!(
            ok("https://a.example:443").as_deref(),
            Ok("https://a.example")
        );
        assert_eq!(
            ok("https://a.example:8443").as_deref(),
            Ok("https://a.example:8443")
        );
        assert_eq!(
            ok("http://localhost:3000").as_deref(),
            Ok("http://localhost:3000")
        );
        assert_eq!(ok("http://127.0.0.1").as_deref(), Ok("http://127.0.0.1"));
        for bad in [
            "*",
            "null",
            "https://*.example.com",
            "http://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "ftp://app.example.com",
            "app.example.com",
            "https://",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://-bad.example",
            "https://a..example",
        ] {
            assert!(CorsOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_event_type_round_trips() {
        for e in SecurityEvent::ALL {
            assert_eq!(SecurityEvent::parse(e.as_str()), Some(e));
        }
        assert!(SecurityEvent::at_least(Severity::High).contains(&SecurityEvent::AccountLocked));
        assert!(!SecurityEvent::at_least(Severity::High).contains(&SecurityEvent::LoginFailed));
    }

    #[test]
    fn delays_grow_then_cap() {
        let d: Vec<i64> = (0..12).map(progressive_delay_seconds).collect();
        assert_eq!(d, vec![0, 0, 0, 1, 2, 4, 8, 16, 30, 30, 30, 30]);
        let last = PROGRESSIVE_DELAY_SATURATES_AT;
        assert!(progressive_delay_seconds(last - 1) < progressive_delay_seconds(last));
        assert_eq!(
            progressive_delay_seconds(last),
            progressive_delay_seconds(i64::MAX)
        );
    }

    #[test]
    fn the_staff_allow_list_confines_every_role_but_customer() {
        let mut p = SecurityPolicy {
            allowed_ips: vec![cidr("198.51.100.0/24")],
            ..Default::default()
        };
        let inside = ip("198.51.100.9");
        let outside = ip("203.0.113.7");
        // Without the switch the list is for API tokens only.
        assert!(p.admits_address(&[Role::Cashier], Some(&outside)));
        p.staff_login_ip_allowlist = true;
        assert!(p.admits_address(&[Role::Cashier], Some(&inside)));
        assert!(!p.admits_address(&[Role::Cashier], Some(&outside)));
        assert!(
            !p.admits_address(&[Role::Cashier], None),
            "no address: not admitted"
        );
        assert!(!p.admits_address(&[Role::Customer, Role::Auditor], Some(&outside)));
        assert!(p.admits_address(&[Role::Customer], Some(&outside)));
        // An empty list admits everyone (the switch alone confines nobody).
        p.allowed_ips.clear();
        assert!(p.admits_address(&[Role::Manager], Some(&outside)));
    }
}
