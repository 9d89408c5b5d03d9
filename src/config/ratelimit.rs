//! Rate-limit settings parsed from configuration: a bucket's `Rate` (`N/S`), the configured
//! limits and the Redis that shares the buckets. `service::ratelimit` enforces them.

use std::fmt;
use std::str::FromStr;

use secrecy::SecretString;

use crate::domain::security::Cidr;

/// Largest bucket and longest refill period accepted in configuration.
pub const MAX_TOKENS: u32 = 10_000_000;
pub const MAX_PERIOD_SECONDS: u32 = 86_400;

/// A bucket size and refill period: `N/S` = N tokens, refilled fully over S seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub tokens: u32,
    pub period_seconds: u32,
}

impl Rate {
    pub const fn new(tokens: u32, period_seconds: u32) -> Self {
        Self {
            tokens,
            period_seconds,
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{s}` is not a rate: expected N/S (N requests per S seconds), e.g. 600/60");
        let (n, p) = s.trim().split_once('/').ok_or_else(bad)?;
        let tokens: u32 = n.trim().parse().map_err(|_| bad())?;
        let period_seconds: u32 = p.trim().parse().map_err(|_| bad())?;
        if !(1..=MAX_TOKENS).contains(&tokens) {
            return Err(format!("`{s}`: N must be between 1 and {MAX_TOKENS}"));
        }
        if !(1..=MAX_PERIOD_SECONDS).contains(&period_seconds) {
            return Err(format!(
                "`{s}`: S must be between 1 and {MAX_PERIOD_SECONDS} seconds"
            ));
        }
        Ok(Self::new(tokens, period_seconds))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tokens, self.period_seconds)
    }
}

/// The configured limits.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub ip: Rate,
    pub credential: Rate,
    pub tenant: Rate,
    pub login: Rate,
    pub refresh: Rate,
    pub mfa: Rate,
    pub password_reset: Rate,
    /// 401/403/404 answers to one address within the window before it is banned.
    pub intrusion_error_burst: Rate,
    pub intrusion_ban_seconds: u32,
    /// Addresses never banned.
    pub intrusion_exempt: Vec<Cidr>,
    /// Refused money movements one credential may cause per window (then 429 until the
    /// window ends): bounds what a client can write to the audit chain by failing.
    pub refusal_budget: Rate,
    /// Exact-match searches by personal data one credential without `customers:read_pii` may
    /// make per window (then 429 until the window ends): a caller shown masked values cannot
    /// recover them by trying values.
    pub search_budget: Rate,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            ip: Rate::new(3000, 60),
            credential: Rate::new(3000, 60),
            tenant: Rate::new(12000, 60),
            login: Rate::new(10, 60),
            refresh: Rate::new(30, 60),
            mfa: Rate::new(10, 60),
            password_reset: Rate::new(5, 300),
            intrusion_error_burst: Rate::new(50, 60),
            intrusion_ban_seconds: 900,
            intrusion_exempt: Vec::new(),
            refusal_budget: Rate::new(1000, 600),
            search_budget: Rate::new(100, 3600),
        }
    }
}

/// Where Redis is, when buckets are shared.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: SecretString,
    pub key_prefix: String,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}
