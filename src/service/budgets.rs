//! Per-credential budgets: how many of one kind of request a credential may make per window
//! before it is refused (429 with `Retry-After`) for the rest of the window, with one security
//! event when the budget is spent.
//!
//! Two budgets exist: refused money movements (`refusal_budget`, issue 13: a client cannot flood
//! the audit chain by failing) and exact-match searches by personal data (`search_budget`,
//! issue 14: a caller who sees values masked cannot recover them by searching). The count lives
//! in the database (one atomic upsert per counted request, shared by every instance); the
//! [`BudgetGate`] only spares a spent credential's requests that write.
//!
//! The budget is the user's for sessions (signing in again does not refill it), the token's own
//! for an API token ([`Principal::idempotency_scope`]).

use std::sync::Mutex;

use super::{AuditBuilder, Core, Principal, RequestMeta};
use crate::config::ratelimit::Rate;
use crate::domain::audit::Outcome;
use crate::domain::security::SecurityEvent;
use crate::error::{AppError, AppResult};

/// A kind of budgeted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Refused money movements (`refusal_budget`).
    Refusals,
    /// Exact-match searches of customers by personal data (`search_budget`), for callers
    /// without `customers:read_pii`.
    Searches,
}

impl Budget {
    fn rate(self, core: &Core) -> Rate {
        match self {
            Budget::Refusals => core.settings.limits.refusal_budget,
            Budget::Searches => core.settings.limits.search_budget,
        }
    }

    /// The API code of the 429 (and the security event's name).
    pub const fn code(self) -> &'static str {
        match self {
            Budget::Refusals => "refusal_budget_exhausted",
            Budget::Searches => "search_budget_exhausted",
        }
    }

    fn event(self) -> SecurityEvent {
        match self {
            Budget::Refusals => SecurityEvent::RefusalBudgetExhausted,
            Budget::Searches => SecurityEvent::SearchBudgetExhausted,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Budget::Refusals => {
                "too many refused money movements from this credential; retry after the window ends"
            }
            Budget::Searches => {
                "too many searches by personal data from this credential; retry after the window ends"
            }
        }
    }

    fn counted(self) -> &'static str {
        match self {
            Budget::Refusals => "refused movements",
            Budget::Searches => "searches by personal data",
        }
    }

    /// The credential's key in the count table (`refusal_budgets`, shared by every budget):
    /// refusals keep the bare credential (as issue 13 stored them), others a prefix.
    fn credential(self, actor: &Principal) -> String {
        match self {
            Budget::Refusals => actor.idempotency_scope(),
            Budget::Searches => format!("search:{}", actor.idempotency_scope()),
        }
    }
}

/// The budgets' state in this process: credentials (by budget, tenant and credential) that spent
/// a budget, and until when (microseconds).
#[derive(Default)]
pub struct BudgetGate(Mutex<std::collections::HashMap<String, i64>>);

impl BudgetGate {
    fn blocked_until(&self, key: &str, now: i64) -> Option<i64> {
        let mut map = self.0.lock().ok()?;
        match map.get(key).copied() {
            Some(until) if until > now => Some(until),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn block(&self, key: String, until: i64) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, u| *u > until - 86_400_000_000);
            map.insert(key, until);
        }
    }
}

fn gate_key(budget: Budget, actor: &Principal) -> AppResult<String> {
    Ok(format!("{}/{}", actor.tenant()?, budget.credential(actor)))
}

fn exhausted(budget: Budget, retry_after_seconds: i64) -> AppError {
    AppError::TooManyAttempts {
        code: budget.code(),
        message: budget.message().into(),
        retry_after_seconds,
    }
}

/// 429 while the caller's `budget` is spent (known to this process).
pub fn refuse_if_spent(core: &Core, budget: Budget, actor: &Principal) -> AppResult<()> {
    let now = core.clock.now().as_micros();
    if let Some(until) = core.budgets.blocked_until(&gate_key(budget, actor)?, now) {
        return Err(exhausted(budget, (until - now + 999_999) / 1_000_000));
    }
    Ok(())
}

/// Counts `n` requests against the caller's `budget` (shared by every instance through the
/// database) and returns whether the budget still held them (`false`: the window's total passed
/// the limit). The request that spends it raises the budget's security event, and the
/// credential is refused for the rest of the window. A count that cannot be written is logged
/// and does not refuse.
pub async fn spend(
    core: &Core,
    meta: &RequestMeta,
    budget: Budget,
    actor: &Principal,
    n: i64,
) -> bool {
    let (Ok(tenant), Ok(key)) = (actor.tenant(), gate_key(budget, actor)) else {
        return true;
    };
    let rate = budget.rate(core);
    let period = i64::from(rate.period_seconds) * 1_000_000;
    let now = core.clock.now().as_micros();
    let window = now - now.rem_euclid(period);
    let total = match core
        .store
        .add_refusals(tenant, &budget.credential(actor), window, n)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, budget = budget.code(), "a budget could not be counted");
            return true;
        }
    };
    let limit = i64::from(rate.tokens);
    if total >= limit {
        core.budgets.block(key, window + period);
        if total - n < limit {
            let audit = AuditBuilder::new(core, meta, Some(actor));
            let ev = audit
                .own(
                    &format!("security.{}", budget.code()),
                    None,
                    Outcome::Denied,
                    Some(&format!(
                        "{total} {} in {} s",
                        budget.counted(),
                        rate.period_seconds
                    )),
                )
                .security(budget.event());
            super::security::record(core, ev).await;
        }
    }
    total <= limit
}

/// Counts one request against `budget` before it is served: 429 (with the time left in the
/// window) when the budget was already spent, or when this request is past it.
pub async fn take(
    core: &Core,
    meta: &RequestMeta,
    budget: Budget,
    actor: &Principal,
) -> AppResult<()> {
    refuse_if_spent(core, budget, actor)?;
    if spend(core, meta, budget, actor, 1).await {
        return Ok(());
    }
    refuse_if_spent(core, budget, actor)
}
