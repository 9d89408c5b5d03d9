//! Credential guesses: every password, TOTP code or recovery code checked against an account
//! (at sign-in, its second step, step-up, a password change, a password reset's code) is
//! counted BEFORE it is checked, atomically, where every instance sees it: in the database
//! (one conditional upsert per key in one transaction,
//! `store::security::SecurityStore::reserve_guess`), which decides; and, when the shared limiter
//! is configured, first in Redis (one Lua script for all of a guess's keys, the same rule), so a
//! burst is refused there without reaching the database. Because the database counts every guess
//! that is checked, the limit is exact even while Redis is unavailable or after it lost its
//! counts. So at most the configured number of guesses is ever checked per account per run,
//! however many arrive at once and on however many instances (issue 13 item 5: counting after
//! the check let 66 of 120 concurrent guesses through a limit of 10).
//!
//! A guess is counted under the account's key (`acct:<HMAC-SHA256(throttle key, tenant, email)>`, whether or not
//! the account exists, so a lock says nothing about existence) and, at sign-in, under the
//! caller's address (`ip:<address>`). What happens next:
//! - wrong: the count stays (it was taken before the check). The guess that took a key's last
//!   one locked it when it was counted; its failure records `account_locked` (or
//!   `login_throttled` for an address);
//! - right, and the sign-in or step-up is complete: the account's run ends (its key is cleared)
//!   and the address gets its guess back;
//! - right, but the attempt goes on or is refused for another reason (a second factor follows,
//!   the account is disabled, the address is not allowed): every key gets its guess back.
//!
//! The progressive delay (1, 2, 4, … 30 s after the third guess) is set by the same atomic step,
//! so a burst meets it too: of 200 simultaneous guesses, 3 are checked and the rest wait.
//!
//! A guess naming an unknown tenant is counted under its address only: it can never count
//! against a real account (issue 13 item 10).

use std::sync::LazyLock;

use super::{AuditBuilder, Core, RequestMeta, ratelimit, security};
use crate::clock::Timestamp;
use crate::domain::audit::{NewAuditEvent, Outcome};
use crate::domain::security::{
    PROGRESSIVE_DELAY_SATURATES_AT, SecurityEvent, SecurityPolicy, progressive_delay_seconds,
};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::store::security::{FailureRule, GuessReservation, GuessSlot, ThrottleRecord};

/// Consecutive guesses: a run ends with a right one, a lock that ran out, or a day of quiet.
pub const ACCOUNT_WINDOW_SECONDS: i64 = 86_400;

/// The slot of an account's key under its tenant's policy.
pub fn account_slot(key: String, policy: &SecurityPolicy) -> GuessSlot {
    GuessSlot {
        key,
        rule: FailureRule {
            window_seconds: ACCOUNT_WINDOW_SECONDS,
            threshold: i64::from(policy.lockout_threshold),
            lock_seconds: i64::from(policy.lockout_minutes) * 60,
        },
        progressive: true,
    }
}

/// The slot of the caller's address (sign-ins only), if the address is known.
pub fn address_slot(core: &Core, meta: &RequestMeta) -> Option<GuessSlot> {
    meta.ip.as_deref().map(|ip| GuessSlot {
        key: security::ip_key(ip),
        rule: core.settings.login_ip_rule,
        progressive: false,
    })
}

fn is_address(key: &str) -> bool {
    key.starts_with("ip:")
}

/// A guess counted under its keys and not yet settled. Settle it with [`Guess::failed`],
/// [`Guess::succeeded`] or [`Guess::refund`]; a guess dropped unsettled (an error on the way)
/// stays counted, which errs on the side of the account.
#[derive(Debug)]
pub struct Guess {
    slots: Vec<GuessSlot>,
    /// Per slot: this guess took the last one and locked the key.
    locked: Vec<bool>,
    tenant: Option<TenantId>,
    /// Counted in Redis as well as in the database.
    shared: bool,
}

/// Counts one guess under every slot before it is checked, or refuses it (429, nothing
/// counted, nothing to check). The refusal is the same whether or not the account exists.
pub async fn reserve(
    core: &Core,
    meta: &RequestMeta,
    tenant: Option<&TenantId>,
    slots: Vec<GuessSlot>,
) -> AppResult<Guess> {
    let now = core.clock.now();
    if slots.is_empty() {
        return Ok(Guess {
            slots,
            locked: Vec::new(),
            tenant: tenant.cloned(),
            shared: false,
        });
    }
    // Redis first, when configured: a burst is refused there without touching the database.
    let (shared, t) = reserve_shared(core, now, &slots).await;
    if let Some(t) = t {
        ratelimit::record_transition(core, meta, t).await;
    }
    let shared_locked = match shared {
        Some(GuessReservation::Refused(row)) => return Err(refusal(&row, now)),
        Some(GuessReservation::Admitted { locked }) => Some(locked),
        None => None,
    };
    // The database counts every guess that will be checked, and decides: the limit holds
    // even while Redis is unavailable (its counts unknown) or after it lost them.
    let decided = core.store.reserve_guess(tenant, &slots, now).await;
    let locked = match decided {
        Ok(GuessReservation::Admitted { locked }) => locked,
        other => {
            if shared_locked.is_some() {
                // Counted in Redis but not checked: give it back there.
                settle_shared(core, &[], &slots).await;
            }
            return match other {
                Ok(GuessReservation::Refused(row)) => Err(refusal(&row, now)),
                Err(e) => Err(e.into()),
                Ok(GuessReservation::Admitted { .. }) => Err(AppError::internal("unreachable")),
            };
        }
    };
    let shared = shared_locked.is_some();
    let locked = match shared_locked {
        Some(r) => locked.iter().zip(r).map(|(d, r)| *d || r).collect(),
        None => locked,
    };
    Ok(Guess {
        slots,
        locked,
        tenant: tenant.cloned(),
        shared,
    })
}

/// The answer to a guess that was not counted.
fn refusal(row: &ThrottleRecord, now: Timestamp) -> AppError {
    let live = |t: Option<i64>| {
        t.filter(|t| *t > now.as_micros())
            .map(Timestamp::from_micros)
    };
    let wait = |until: Timestamp| now.seconds_until(until).max(1);
    match (live(row.locked_until), live(row.next_attempt_at)) {
        (Some(until), _) if is_address(&row.key) => AppError::TooManyAttempts {
            code: "too_many_attempts",
            message: "too many failed sign-ins from this address; try again later".into(),
            retry_after_seconds: wait(until),
        },
        (Some(until), _) => AppError::TooManyAttempts {
            code: "account_locked",
            message: "too many failed sign-ins: sign-in is locked for a while; try again later or ask a manager to unlock it".into(),
            retry_after_seconds: wait(until),
        },
        (None, Some(until)) => AppError::TooManyAttempts {
            code: "too_many_attempts",
            message: "too many failed sign-ins; wait before trying again".into(),
            retry_after_seconds: wait(until),
        },
        // Out of guesses: the store has just locked the key.
        (None, None) => AppError::TooManyAttempts {
            code: if is_address(&row.key) {
                "too_many_attempts"
            } else {
                "account_locked"
            },
            message: "too many failed sign-ins; try again later".into(),
            retry_after_seconds: 1,
        },
    }
}

impl Guess {
    /// The guess was wrong: it stays counted. Records `failure` (its audit record and security
    /// event) and, for each key this guess locked, `account_locked` or `login_throttled`.
    pub async fn failed(self, core: &Core, meta: &RequestMeta, failure: NewAuditEvent) {
        let target = failure.target_type.clone().zip(failure.target_id.clone());
        security::record(core, failure).await;
        let audit = AuditBuilder::new(core, meta, None);
        for (slot, locked) in self.slots.iter().zip(&self.locked) {
            if !locked {
                continue;
            }
            let ev = if is_address(&slot.key) {
                security::event(
                    &audit,
                    self.tenant.as_ref(),
                    SecurityEvent::LoginThrottled,
                    "security.login_throttled",
                    None,
                    Outcome::Denied,
                    Some("address_failure_budget"),
                )
            } else {
                security::event(
                    &audit,
                    self.tenant.as_ref(),
                    SecurityEvent::AccountLocked,
                    "security.account_locked",
                    target.as_ref().map(|(t, id)| (t.as_str(), id.as_str())),
                    Outcome::Denied,
                    Some("failure_threshold"),
                )
            };
            security::record(core, ev).await;
        }
    }

    /// The guess was right and completed the proof: the account's run of failures ends, and
    /// the address gets its guess back (in Redis too, when it was counted there).
    pub async fn succeeded(self, core: &Core) -> AppResult<()> {
        let (addresses, accounts): (Vec<GuessSlot>, Vec<GuessSlot>) =
            self.slots.into_iter().partition(|s| is_address(&s.key));
        let clear: Vec<String> = accounts.into_iter().map(|s| s.key).collect();
        if self.shared {
            settle_shared(core, &clear, &addresses).await;
        }
        Ok(core.store.settle_guess(&clear, &addresses).await?)
    }

    /// The guess was right, but the attempt goes on (a second factor) or is refused for
    /// another reason: every key gets its guess back.
    pub async fn refund(self, core: &Core) -> AppResult<()> {
        if self.shared {
            settle_shared(core, &[], &self.slots).await;
        }
        Ok(core.store.settle_guess(&[], &self.slots).await?)
    }
}

/// Settles a guess counted in Redis (see [`SETTLE`]). Best effort: the database holds the
/// decisive count, and a Redis that does not answer keeps at most a stricter one until the
/// key expires.
async fn settle_shared(core: &Core, clear: &[String], refund: &[GuessSlot]) {
    if clear.is_empty() && refund.is_empty() {
        return;
    }
    let keys: Vec<String> = clear
        .iter()
        .map(|k| redis_key(k))
        .chain(refund.iter().map(|s| redis_key(&s.key)))
        .collect();
    let args: Vec<i64> = clear
        .iter()
        .map(|_| 0)
        .chain(refund.iter().map(|s| s.rule.threshold))
        .collect();
    let _ = core
        .limits
        .run_script(core.clock.now(), &SETTLE, &keys, &args)
        .await;
}

/// Forgets every guess counted under `key` (a manager's unlock, a password reset), in the
/// database with `audit` and in Redis. Whether any were counted.
pub async fn clear(core: &Core, key: &str, audit: &[NewAuditEvent]) -> AppResult<bool> {
    let (shared, _) = core
        .limits
        .run_script(core.clock.now(), &SETTLE, &[redis_key(key)], &[0])
        .await;
    let in_redis = shared.is_some_and(|v| v.first().is_some_and(|n| *n > 0));
    let in_db = core.store.clear_login_throttle(key, audit).await?;
    Ok(in_redis || in_db)
}

// ---------------------------------------------------------------------------------------------
// Redis.

fn redis_key(key: &str) -> String {
    format!("guess:{key}")
}

/// Counts a guess in Redis (the database counts it too, and decides): `None` without Redis or
/// while it is unavailable.
async fn reserve_shared(
    core: &Core,
    now: Timestamp,
    slots: &[GuessSlot],
) -> (Option<GuessReservation>, Option<ratelimit::Transition>) {
    if !core.limits.shared() {
        return (None, None);
    }
    let keys: Vec<String> = slots.iter().map(|s| redis_key(&s.key)).collect();
    let now_ms = now.as_micros().div_euclid(1000);
    let mut args = vec![now_ms];
    for s in slots {
        args.extend([
            s.rule.threshold,
            s.rule.window_seconds.saturating_mul(1000),
            s.rule.lock_seconds.saturating_mul(1000),
            i64::from(s.progressive),
        ]);
    }
    let (got, t) = core.limits.run_script(now, &RESERVE, &keys, &args).await;
    let outcome = got.and_then(|v| match v.first() {
        Some(1) if v.len() == slots.len() + 1 => Some(GuessReservation::Admitted {
            locked: v.iter().skip(1).map(|l| *l == 1).collect(),
        }),
        Some(0) if v.len() == 4 => {
            let i = usize::try_from(v[1] - 1).ok()?;
            let ms = |x: i64| (x > 0).then(|| x.saturating_mul(1000));
            Some(GuessReservation::Refused(ThrottleRecord {
                key: slots.get(i)?.key.clone(),
                tenant_id: None,
                failures: 0,
                window_started_at: 0,
                last_failed_at: 0,
                locked_until: ms(v[2]),
                next_attempt_at: ms(v[3]),
            }))
        }
        _ => None,
    });
    (outcome, t)
}

/// The reservation in Redis, the same rule as the database's upsert. KEYS: the guess's keys
/// (hashes {f = guesses in the run, ws = run start, lu = locked until, na = next guess at});
/// ARGV[1] = now (ms, application clock), then per key: threshold, window (ms), lock (ms),
/// progressive (1/0). Returns {1, locked_1, …} when counted under every key, or
/// {0, i, locked_until, next_at} when key i refused (nothing counted).
static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| {
    let delays: Vec<String> = (0..=PROGRESSIVE_DELAY_SATURATES_AT)
        .map(|g| progressive_delay_seconds(g).to_string())
        .collect();
    redis::Script::new(&format!(
        r"
local now = tonumber(ARGV[1])
local delays = {{{delays}}}
local runs = {{}}
for i = 1, #KEYS do
  local b = 2 + 4 * (i - 1)
  local threshold, window, lock = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local v = redis.call('HMGET', KEYS[i], 'f', 'ws', 'lu', 'na')
  local f, ws, lu, na = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
  if lu ~= nil and lu > now then return {{0, i, lu, na or 0}} end
  if na ~= nil and na > now then return {{0, i, 0, na}} end
  if f == nil or ws == nil or lu ~= nil or ws < now - window then f = 0; ws = now end
  if f >= threshold then
    redis.call('HSET', KEYS[i], 'lu', now + lock)
    redis.call('PEXPIRE', KEYS[i], math.max(window, lock))
    return {{0, i, now + lock, 0}}
  end
  runs[i] = {{f + 1, ws}}
end
local out = {{1}}
for i = 1, #KEYS do
  local b = 2 + 4 * (i - 1)
  local threshold, window, lock = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local n, ws = runs[i][1], runs[i][2]
  redis.call('HSET', KEYS[i], 'f', n, 'ws', ws)
  local locked = 0
  if n >= threshold then
    redis.call('HSET', KEYS[i], 'lu', now + lock)
    locked = 1
  else
    redis.call('HDEL', KEYS[i], 'lu')
  end
  if tonumber(ARGV[b + 3]) == 1 then
    redis.call('HSET', KEYS[i], 'na', now + 1000 * delays[math.min(n, #delays - 1) + 1])
  else
    redis.call('HDEL', KEYS[i], 'na')
  end
  redis.call('PEXPIRE', KEYS[i], math.max(window, lock))
  out[#out + 1] = locked
end
return out
",
        delays = delays.join(", ")
    ))
});

/// Settles a right guess in Redis: KEYS[i] with ARGV[i] = 0 is forgotten (the run ends);
/// with ARGV[i] = its threshold, one guess is given back: one fewer, no delay, no lock below
/// the threshold. Returns {how many keys were forgotten}.
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local forgotten = 0
for i = 1, #KEYS do
  local threshold = tonumber(ARGV[i])
  if threshold == 0 then
    forgotten = forgotten + redis.call('DEL', KEYS[i])
  else
    local f = tonumber(redis.call('HGET', KEYS[i], 'f'))
    if f ~= nil and f > 0 then
      f = f - 1
      redis.call('HSET', KEYS[i], 'f', f)
      redis.call('HDEL', KEYS[i], 'na')
      if f < threshold then redis.call('HDEL', KEYS[i], 'lu') end
    end
  end
end
return {forgotten}
",
    )
});
