//! Rate limits: token buckets per client address, per credential, per tenant and per sensitive
//! route class, plus the counters and bans of intrusion detection (`service::intrusion`).
//!
//! A bucket of `N/S` holds at most N tokens and refills at N tokens per S seconds; a request
//! takes one token from every bucket of a check, or — when any of them is empty — none at all.
//! Buckets live in process by default. With `redis_url` they live in Redis (one atomic Lua
//! script per check, keys `<prefix>rl:<class>:<key>` expiring after the refill period), so every
//! instance shares them. Time always comes from the application's clock (`Core.clock`), never
//! from Redis `TIME`: tests move a manual clock instead of sleeping, and instances are expected
//! to run NTP-synchronised clocks; a clock behind the stored time refills nothing (never
//! negatively) and never moves a bucket's time backwards.
//!
//! When Redis fails (an error or a timeout of its short connect and response timeouts), the
//! limiter falls back to its in-process buckets at once, reports the outage once, and tries
//! Redis again at most every [`REDIS_RETRY_SECONDS`] (by the application clock), with a fresh
//! connection; when Redis answers it reports the restoration and uses Redis again. Requests are
//! served throughout.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Core, RequestMeta};
use crate::clock::Timestamp;
use crate::config::ratelimit::{LimitSettings, Rate, RedisSettings};
use crate::domain::audit::{ActorType, Outcome};
use crate::domain::security::SecurityEvent;

/// How often (seconds, application clock) a Redis that failed is tried again.
pub const REDIS_RETRY_SECONDS: i64 = 5;
/// Redis connect timeout.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Redis response timeout.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
/// The hard bound on any one Redis operation, connection included.
const REDIS_OPERATION_BOUND: Duration = Duration::from_millis(800);

// `Rate` is parsed by configuration (`config::ratelimit`); its bucket arithmetic is here.
impl Rate {
    fn period_ms(self) -> i64 {
        i64::from(self.period_seconds) * 1000
    }

    /// The bucket's content when full, in token-milliseconds (one token = `period_ms`).
    fn full(self) -> i64 {
        i64::from(self.tokens) * self.period_ms()
    }
}

/// What a bucket limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Every request, per client address.
    Ip,
    /// Per signed-in session or API token.
    Credential,
    /// Per tenant.
    Tenant,
    /// `POST /v1/auth/login`, per address.
    Login,
    /// `POST /v1/auth/refresh`, per address.
    Refresh,
    /// `POST /v1/auth/mfa` and `POST /v1/auth/step-up`, per address.
    Mfa,
    /// `POST /v1/auth/password-reset` and `.../confirm`, per address.
    PasswordReset,
    /// 401/403/404 answers per address (intrusion detection; an empty bucket bans).
    Intrusion,
}

impl Class {
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Ip => "ip",
            Class::Credential => "credential",
            Class::Tenant => "tenant",
            Class::Login => "login",
            Class::Refresh => "refresh",
            Class::Mfa => "mfa",
            Class::PasswordReset => "password_reset",
            Class::Intrusion => "intrusion",
        }
    }
}

// `LimitSettings` is parsed by configuration (`config::ratelimit`); the rate per `Class` is here.
impl LimitSettings {
    pub fn rate(&self, class: Class) -> Rate {
        match class {
            Class::Ip => self.ip,
            Class::Credential => self.credential,
            Class::Tenant => self.tenant,
            Class::Login => self.login,
            Class::Refresh => self.refresh,
            Class::Mfa => self.mfa,
            Class::PasswordReset => self.password_reset,
            Class::Intrusion => self.intrusion_error_burst,
        }
    }
}

/// One bucket a request must take a token from.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub class: Class,
    pub key: String,
    pub rate: Rate,
}

/// The state of one bucket after a check, as the `RateLimit-*` headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub class: Class,
    pub limit: u32,
    pub remaining: u32,
    /// Whole seconds until the bucket is full again.
    pub reset_seconds: i64,
    /// Whole seconds until it holds a token again (0 when it holds one).
    pub retry_after_seconds: i64,
}

impl Quota {
    /// The more restrictive of two: fewer remaining, then the later reset.
    pub fn tighter(self, other: Quota) -> Quota {
        if (other.remaining, std::cmp::Reverse(other.reset_seconds))
            < (self.remaining, std::cmp::Reverse(self.reset_seconds))
        {
            other
        } else {
            self
        }
    }
}

/// The answer to a check.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The bucket that refused the request (no token was taken from any), if one did.
    pub refused: Option<Quota>,
    /// The most restrictive bucket of the check.
    pub quota: Option<Quota>,
}

/// Converts a bucket's content (token-milliseconds) into what the headers say.
fn quota_of(b: &Bucket, level: i64) -> Quota {
    let rate = b.rate;
    let per_ms = i64::from(rate.tokens).max(1);
    let ceil_secs = |token_ms: i64| -> i64 {
        if token_ms <= 0 {
            0
        } else {
            // token-ms / tokens-per-ms = ms; rounded up to whole seconds.
            let ms = (token_ms + per_ms - 1) / per_ms;
            (ms + 999) / 1000
        }
    };
    let period = rate.period_ms().max(1);
    let remaining = u32::try_from((level / period).max(0)).unwrap_or(u32::MAX);
    Quota {
        class: b.class,
        limit: rate.tokens,
        remaining,
        reset_seconds: ceil_secs(rate.full() - level),
        retry_after_seconds: ceil_secs(period - level),
    }
}

/// A state change of the shared backend that the caller records as a security event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Redis failed; the in-process buckets apply until it answers again.
    Unavailable(String),
    /// Redis answers again; buckets are shared again.
    Restored,
}

// ---------------------------------------------------------------- in-process buckets

#[derive(Debug, Clone, Copy)]
struct LocalBucket {
    level: i64,
    at_ms: i64,
    period_ms: i64,
}

/// Buckets and bans of this process (and the fallback while Redis is away).
#[derive(Debug, Default)]
struct Local {
    buckets: Mutex<HashMap<String, LocalBucket>>,
    bans: Mutex<HashMap<String, i64>>,
    checks: AtomicU64,
}

/// A bucket's key in process (the class keeps an address's buckets apart, as in Redis).
fn local_key(b: &Bucket) -> String {
    format!("{}:{}", b.class.as_str(), b.key)
}

/// The refill both backends apply (the Lua script is the same arithmetic).
fn refill(level: i64, at_ms: i64, now_ms: i64, rate: Rate) -> i64 {
    let elapsed = (now_ms - at_ms).clamp(0, rate.period_ms());
    (level + elapsed * i64::from(rate.tokens)).min(rate.full())
}

impl Local {
    /// Whether the tokens were taken, and every bucket's content afterwards.
    fn take(&self, now_ms: i64, buckets: &[Bucket]) -> (bool, Vec<i64>) {
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            // A bucket untouched for its whole period is full: forgetting it changes nothing.
            map.retain(|_, b| now_ms - b.at_ms < b.period_ms);
        }
        let levels: Vec<(i64, i64)> = buckets
            .iter()
            .map(|b| {
                let (level, at) = map
                    .get(&local_key(b))
                    .map_or((b.rate.full(), now_ms), |s| (s.level, s.at_ms));
                (refill(level, at, now_ms, b.rate), at.max(now_ms))
            })
            .collect();
        let ok = buckets
            .iter()
            .zip(&levels)
            .all(|(b, (level, _))| *level >= b.rate.period_ms());
        let after = buckets
            .iter()
            .zip(levels)
            .map(|(b, (level, at))| {
                if ok {
                    let level = level - b.rate.period_ms();
                    map.insert(
                        local_key(b),
                        LocalBucket {
                            level,
                            at_ms: at,
                            period_ms: b.rate.period_ms(),
                        },
                    );
                    level
                } else {
                    level
                }
            })
            .collect();
        (ok, after)
    }

    fn banned_until(&self, key: &str, now_ms: i64) -> Option<i64> {
        let mut bans = match self.bans.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match bans.get(key) {
            Some(until) if *until > now_ms => Some(*until),
            Some(_) => {
                bans.remove(key);
                None
            }
            None => None,
        }
    }

    /// Bans `key` until `until_ms` unless a ban is already in force; whether this call banned.
    fn ban(&self, key: &str, now_ms: i64, until_ms: i64) -> bool {
        let mut bans = match self.bans.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if bans.len() > 100_000 {
            bans.retain(|_, until| *until > now_ms);
        }
        match bans.get(key) {
            Some(until) if *until > now_ms => false,
            _ => {
                bans.insert(key.to_owned(), until_ms);
                true
            }
        }
    }
}

// ---------------------------------------------------------------- Redis

/// Takes a token from every bucket named in KEYS, or from none when one is empty.
/// ARGV[1] = now (ms, application clock); ARGV[2i], ARGV[2i+1] = tokens and period (ms) of
/// KEYS[i]. A bucket is a hash {l = content in token-ms (one token = period ms), at = time}.
/// Returns {ok, level_1, ..., level_n} (levels after the check).
const TAKE_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local levels, ats = {}, {}
local ok = 1
for i = 1, #KEYS do
  local tokens = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local full = tokens * period
  local v = redis.call('HMGET', KEYS[i], 'l', 'at')
  local level, at = tonumber(v[1]), tonumber(v[2])
  if level == nil or at == nil then level = full; at = now end
  local elapsed = now - at
  if elapsed < 0 then elapsed = 0 end
  if elapsed > period then elapsed = period end
  level = math.min(full, level + elapsed * tokens)
  if at < now then at = now end
  levels[i] = level
  ats[i] = at
  if level < period then ok = 0 end
end
local out = {ok}
for i = 1, #KEYS do
  local period = tonumber(ARGV[2 * i + 1])
  local level = levels[i]
  if ok == 1 then
    level = level - period
    redis.call('HSET', KEYS[i], 'l', level, 'at', ats[i])
    redis.call('PEXPIRE', KEYS[i], period)
  end
  out[#out + 1] = level
end
return out
";

/// Bans KEYS[1] until ARGV[2] (ms) unless a ban later than ARGV[1] (now) is in force; the key
/// expires after ARGV[3] ms. Returns 1 when this call banned.
const BAN_SCRIPT: &str = r"
local until_now = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_now > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Up,
    /// Failed; not tried again before `retry_at_ms`.
    Down {
        retry_at_ms: i64,
    },
}

struct Redis {
    client: redis::Client,
    prefix: String,
    conn: Mutex<Option<redis::aio::ConnectionManager>>,
    health: Mutex<Health>,
    take: redis::Script,
    ban: redis::Script,
}

/// Why a Redis operation failed, without the URL (it may hold a password).
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connection_refusal() {
        "connection refused".to_owned()
    } else if e.is_io_error() || e.is_connection_dropped() {
        "connection lost".to_owned()
    } else {
        format!("{:?}", e.kind())
    }
}

impl Redis {
    fn open(settings: &RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.expose_secret())
            .map_err(|e| format!("invalid Redis URL: {:?}", e.kind()))?;
        Ok(Self {
            client,
            prefix: settings.key_prefix.clone(),
            conn: Mutex::new(None),
            health: Mutex::new(Health::Up),
            take: redis::Script::new(TAKE_SCRIPT),
            ban: redis::Script::new(BAN_SCRIPT),
        })
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        match self.health.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn cached_conn(&self) -> Option<redis::aio::ConnectionManager> {
        match self.conn.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store_conn(&self, conn: Option<redis::aio::ConnectionManager>) {
        match self.conn.lock() {
            Ok(mut c) => *c = conn,
            Err(poisoned) => *poisoned.into_inner() = conn,
        }
    }

    async fn connect(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            // One attempt: a dead Redis must fail fast, the limiter does its own retrying.
            .set_number_of_retries(0);
        redis::aio::ConnectionManager::new_with_config(self.client.clone(), config).await
    }

    /// Runs `op` unless Redis is down and not yet due for a retry. `None`: use the in-process
    /// backend.
    async fn run<T, F, Fut>(&self, now_ms: i64, op: F) -> (Option<T>, Option<Transition>)
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let probing = {
            let mut h = self.health();
            match *h {
                Health::Up => false,
                Health::Down { retry_at_ms } if now_ms < retry_at_ms => return (None, None),
                Health::Down { .. } => {
                    // This request probes; the others stay local until the next retry time.
                    *h = Health::Down {
                        retry_at_ms: now_ms + REDIS_RETRY_SECONDS * 1000,
                    };
                    true
                }
            }
        };
        let attempt = async {
            let conn = match (probing, self.cached_conn()) {
                (false, Some(c)) => c,
                _ => {
                    let c = self.connect().await?;
                    self.store_conn(Some(c.clone()));
                    c
                }
            };
            op(conn).await
        };
        let result = match tokio::time::timeout(REDIS_OPERATION_BOUND, attempt).await {
            Ok(r) => r.map_err(|e| describe(&e)),
            Err(_) => Err("timeout".to_owned()),
        };
        let mut h = self.health();
        match result {
            Ok(v) => {
                if probing && *h != Health::Up {
                    *h = Health::Up;
                    return (Some(v), Some(Transition::Restored));
                }
                (Some(v), None)
            }
            Err(why) => {
                let was_up = *h == Health::Up;
                if was_up {
                    *h = Health::Down {
                        retry_at_ms: now_ms + REDIS_RETRY_SECONDS * 1000,
                    };
                }
                drop(h);
                self.store_conn(None);
                if was_up {
                    (None, Some(Transition::Unavailable(why)))
                } else {
                    tracing::debug!(reason = %why, "Redis still unavailable; local rate limits apply");
                    (None, None)
                }
            }
        }
    }

    fn key(&self, class: &str, key: &str) -> String {
        format!("{}rl:{class}:{key}", self.prefix)
    }

    fn ban_key(&self, key: &str) -> String {
        format!("{}ban:{key}", self.prefix)
    }
}

// ---------------------------------------------------------------- the limiter

/// Token buckets and bans, in Redis when configured (with the in-process fallback), else in
/// process. Held in `Core.limits`.
pub struct RateLimiter {
    local: Local,
    redis: Option<Redis>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// An in-process limiter, or one sharing its buckets through Redis. Nothing connects yet:
    /// the first check does (so a dead Redis never delays start-up).
    pub fn new(redis: Option<&RedisSettings>) -> Result<Self, String> {
        Ok(Self {
            local: Local::default(),
            redis: redis.map(Redis::open).transpose()?,
        })
    }

    /// Whether buckets are configured to live in Redis.
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether Redis answers a PING right now (`None` without Redis), for readiness checks.
    pub async fn redis_reachable(&self) -> Option<bool> {
        let r = self.redis.as_ref()?;
        let ping = async {
            let mut conn = match r.cached_conn() {
                Some(c) => c,
                None => r.connect().await?,
            };
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        Some(matches!(
            tokio::time::timeout(REDIS_OPERATION_BOUND, ping).await,
            Ok(Ok(_))
        ))
    }

    /// Takes a token from each of `buckets` (from none if one is empty).
    pub async fn take(&self, now: Timestamp, buckets: &[Bucket]) -> (Decision, Option<Transition>) {
        let now_ms = now.as_micros().div_euclid(1000);
        let mut transition = None;
        let mut levels = None;
        if let Some(r) = &self.redis
            && !buckets.is_empty()
        {
            let mut invocation = r.take.prepare_invoke();
            invocation.arg(now_ms);
            for b in buckets {
                invocation
                    .key(r.key(b.class.as_str(), &b.key))
                    .arg(b.rate.tokens)
                    .arg(b.rate.period_ms());
            }
            let (got, t) = r
                .run(now_ms, |mut conn| async move {
                    invocation.invoke_async::<Vec<i64>>(&mut conn).await
                })
                .await;
            transition = t;
            levels = got.filter(|v| v.len() == buckets.len() + 1);
        }
        let (ok, levels) = match levels {
            Some(v) => (
                v.first() == Some(&1),
                v.get(1..).unwrap_or_default().to_vec(),
            ),
            None => self.local.take(now_ms, buckets),
        };
        (decide(buckets, ok, &levels), transition)
    }

    /// Until when `key` is banned (`None`: not banned). Bans made in process (while Redis was
    /// away) stay in force on this instance.
    pub async fn banned_until(
        &self,
        now: Timestamp,
        key: &str,
    ) -> (Option<Timestamp>, Option<Transition>) {
        let now_ms = now.as_micros().div_euclid(1000);
        let local = self.local.banned_until(key, now_ms);
        let mut transition = None;
        let mut shared = None;
        if let Some(r) = &self.redis {
            let k = r.ban_key(key);
            let (got, t) = r
                .run(now_ms, |mut conn| async move {
                    redis::cmd("GET")
                        .arg(&k)
                        .query_async::<Option<i64>>(&mut conn)
                        .await
                })
                .await;
            transition = t;
            shared = got.flatten().filter(|until| *until > now_ms);
        }
        let until = local.max(shared);
        (
            until.map(|ms| Timestamp::from_micros(ms.saturating_mul(1000))),
            transition,
        )
    }

    /// Bans `key` for `seconds` unless a ban is already in force; whether this call banned.
    pub async fn ban(&self, now: Timestamp, key: &str, seconds: u32) -> (bool, Option<Transition>) {
        let now_ms = now.as_micros().div_euclid(1000);
        let ttl_ms = i64::from(seconds) * 1000;
        let until_ms = now_ms + ttl_ms;
        if let Some(r) = &self.redis {
            let mut invocation = r.ban.prepare_invoke();
            invocation
                .key(r.ban_key(key))
                .arg(now_ms)
                .arg(until_ms)
                .arg(ttl_ms);
            let (got, t) = r
                .run(now_ms, |mut conn| async move {
                    invocation.invoke_async::<i64>(&mut conn).await
                })
                .await;
            if let Some(banned) = got {
                return (banned == 1, t);
            }
            return (self.local.ban(key, now_ms, until_ms), t);
        }
        (self.local.ban(key, now_ms, until_ms), None)
    }
}

impl RateLimiter {
    /// Runs `script` in the shared Redis over `keys` (each under this limiter's key prefix)
    /// with `args`, for counters that must be shared by every instance (credential guesses,
    /// `service::guesses`). `None` without Redis, or while it is unavailable: the caller falls
    /// back to its own shared store, never to this process alone.
    pub(crate) async fn run_script(
        &self,
        now: Timestamp,
        script: &redis::Script,
        keys: &[String],
        args: &[i64],
    ) -> (Option<Vec<i64>>, Option<Transition>) {
        let Some(r) = &self.redis else {
            return (None, None);
        };
        let now_ms = now.as_micros().div_euclid(1000);
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(format!("{}{k}", r.prefix));
        }
        for a in args {
            invocation.arg(*a);
        }
        r.run(now_ms, |mut conn| async move {
            invocation.invoke_async::<Vec<i64>>(&mut conn).await
        })
        .await
    }
}

/// Builds the decision from whether the tokens were taken and the buckets' contents after.
fn decide(buckets: &[Bucket], ok: bool, levels: &[i64]) -> Decision {
    let quotas: Vec<Quota> = buckets
        .iter()
        .zip(levels)
        .map(|(b, l)| quota_of(b, *l))
        .collect();
    let quota = quotas.iter().copied().reduce(Quota::tighter);
    let refused = if ok {
        None
    } else {
        // The first bucket without a token is the one that refused.
        buckets
            .iter()
            .zip(levels)
            .zip(&quotas)
            .find(|((b, l), _)| **l < b.rate.period_ms())
            .map(|(_, q)| *q)
            .or(quota)
    };
    Decision { refused, quota }
}

// ---------------------------------------------------------------- recording

/// Records a backend transition as a platform-level security event (and a log line).
pub async fn record_transition(core: &Core, meta: &RequestMeta, t: Transition) {
    let (kind, reason) = match &t {
        Transition::Unavailable(why) => {
            tracing::warn!(
                reason = %why,
                "Redis is unavailable: rate limits and bans fall back to this instance's own \
                 buckets until it answers again (retried every {REDIS_RETRY_SECONDS} s)"
            );
            (SecurityEvent::RateLimitBackendUnavailable, why.clone())
        }
        Transition::Restored => {
            tracing::info!("Redis answers again: rate limits and bans are shared again");
            (SecurityEvent::RateLimitBackendRestored, "redis".to_owned())
        }
    };
    let system = RequestMeta {
        request_id: meta.request_id.clone(),
        ip: None,
        user_agent: None,
    };
    let mut ev = super::AuditBuilder::new(core, &system, None)
        .event(
            None,
            &format!("security.{}", kind.as_str()),
            Some(("rate_limit_backend", "redis")),
            match t {
                Transition::Unavailable(_) => Outcome::Failure,
                Transition::Restored => Outcome::Success,
            },
            Some(&reason),
        )
        .security(kind);
    ev.actor_type = ActorType::System;
    super::security::record(core, ev).await;
}

/// Checks `buckets` with the core's limiter and clock, recording a backend transition.
pub async fn check(core: &Core, meta: &RequestMeta, buckets: &[Bucket]) -> Decision {
    let (decision, t) = core.limits.take(core.clock.now(), buckets).await;
    if let Some(t) = t {
        record_transition(core, meta, t).await;
    }
    if let Some(q) = decision.refused {
        metrics::counter!("kasho_rate_limited_total", "class" => q.class.as_str()).increment(1);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(class: Class, key: &str, rate: &str) -> Bucket {
        Bucket {
            class,
            key: key.to_owned(),
            rate: rate.parse().unwrap_or_else(|e| unreachable!("{e}")),
        }
    }

    #[test]
    fn a_check_takes_from_every_bucket_or_from_none() {
        let local = Local::default();
        let both = [
            bucket(Class::Ip, "a", "5/60"),
            bucket(Class::Login, "a", "2/60"),
        ];
        let (ok, levels) = local.take(0, &both);
        let d = decide(&both, ok, &levels);
        assert!(d.refused.is_none());
        let q = d.quota.unwrap_or_else(|| unreachable!());
        assert_eq!((q.class, q.limit, q.remaining), (Class::Login, 2, 1));
        assert_eq!((q.reset_seconds, q.retry_after_seconds), (30, 0));
        let (ok, levels) = local.take(0, &both);
        assert!(ok && decide(&both, ok, &levels).refused.is_none());
        // The login bucket is empty: refused, and the address's bucket keeps its 3 tokens.
        let (ok, levels) = local.take(0, &both);
        let d = decide(&both, ok, &levels);
        let r = d.refused.unwrap_or_else(|| unreachable!());
        assert_eq!((r.class, r.retry_after_seconds), (Class::Login, 30));
        let (_, ip_only) = local.take(0, &both[..1]);
        assert_eq!(quota_of(&both[0], ip_only[0]).remaining, 2);
        // Half a token back after 15 s is not a token; after 30 s it is.
        assert!(!local.take(15_000, &both).0);
        assert!(local.take(30_000, &both).0);
        // A clock that went backwards refills nothing and takes nothing it should not.
        assert!(!local.take(10_000, &both).0);
    }

    #[test]
    fn rates_parse_and_refill_exactly() {
        use crate::config::ratelimit::{MAX_PERIOD_SECONDS, MAX_TOKENS};
        let r: Rate = "600/60".parse().unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((r.tokens, r.period_seconds), (600, 60));
        assert_eq!(r.to_string(), "600/60");
        for bad in [
            "", "600", "/60", "600/", "0/60", "1/0", "a/b", "1/60/1", "1.5/60",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let big = Rate::new(MAX_TOKENS, MAX_PERIOD_SECONDS);
        // The largest bucket stays exact in a double (what the Lua script computes with).
        assert!(big.full() < (1_i64 << 53));
        assert_eq!(refill(0, 0, i64::MAX / 2, big), big.full());
        assert_eq!(refill(0, 1_000, 0, r), 0, "never negative");
        let q = quota_of(&bucket(Class::Ip, "x", "3/60"), 0);
        assert_eq!(
            (q.remaining, q.retry_after_seconds, q.reset_seconds),
            (0, 20, 60)
        );
    }

    #[test]
    fn local_bans_end_and_are_not_renewed_while_in_force() {
        let local = Local::default();
        assert!(local.ban("ip", 0, 1_000));
        assert!(!local.ban("ip", 500, 1_500), "already banned");
        assert_eq!(local.banned_until("ip", 999), Some(1_000));
        assert_eq!(local.banned_until("ip", 1_000), None);
        assert!(local.ban("ip", 1_000, 2_000));
    }
}
