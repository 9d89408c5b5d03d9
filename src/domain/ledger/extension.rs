//! The ledger core's extension contract: how later features (transaction monitoring, webhooks,
//! payments with FX legs) act inside the posting transaction. Four parts, all applied by the
//! engine ([`super::engine::plan`]) to the snapshot the writer loaded under lock:
//!
//! - **Pre-commit checks** ([`PreCommitCheck`]) see the command and the locked state (the
//!   accounts as they stand before the movement, its subject customer, the running totals they
//!   asked for) and answer allow, refuse with a code, or review. A reviewed movement posts
//!   nothing: the engine turns it into a review hold that reserves the money it would have moved.
//! - **Side writes** ([`SideWrite`]) committed in the same transaction as the movement, and only
//!   if it posts (or is held for review): additions to running totals ([`CounterKey`]) and event
//!   rows (`ledger_events`, which the webhook outbox will read).
//! - **Linked groups**: an atomic batch (`LedgerPort::post` with `atomic`) posts every movement or
//!   none, whatever their currencies (the legs of an FX conversion).
//! - **An explicit subject customer** (`TransferCommand::subject`): the customer limits and
//!   running totals count a movement against when its accounts do not say (cash paid in at a
//!   counter by a walk-in customer).
//!
//! Running totals are the mechanism built once here: KYC's daily and monthly outgoing limits use
//! it (metric [`OUTGOING`]), and monitoring's windowed aggregates will. A total lives in one row
//! per (tenant, subject, metric, currency, window); the writer loads the rows a batch needs inside
//! its transaction and the engine reads and adds to them, so a limit is exact however many
//! instances post.

use std::collections::HashMap;
use std::fmt;

use super::TransferCommand;
use super::engine::AccountState;
use crate::domain::kyc::{self, TierLimits};

/// A running total's window: the UTC day or the UTC calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub const fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        [Period::Day, Period::Month]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The start of the window holding `micros`.
    pub fn start(self, micros: i64) -> i64 {
        match self {
            Period::Day => kyc::utc_day_start(micros),
            Period::Month => kyc::utc_month_start(micros),
        }
    }

    /// The first instant after the window that starts at `start`.
    pub fn end(self, start: i64) -> i64 {
        const DAY: i64 = 86_400_000_000;
        match self {
            Period::Day => start + DAY,
            // Day 1 plus 32 days is always in the next month.
            Period::Month => kyc::utc_month_start(start + 32 * DAY),
        }
    }
}

/// The metric KYC's outgoing limits read: what a customer sent in a currency (the non-reversal
/// debits of its account, and the movements that name it as their subject). The store seeds a
/// missing window of this metric from the entries, so it is right from the first movement after
/// a tenant configures limits; any other metric starts at zero when a check first counts it.
pub const OUTGOING: &str = "outgoing";

/// One running total: a metric of a subject customer, in one currency, over one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub tenant_id: String,
    /// The customer id the total is about.
    pub subject: String,
    pub metric: String,
    pub currency: String,
    pub period: Period,
    pub window_start: i64,
}

impl CounterKey {
    /// The key of the window of `period` that holds the instant `at`.
    pub fn at(
        tenant_id: &str,
        subject: &str,
        metric: &str,
        currency: &str,
        period: Period,
        at: i64,
    ) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            subject: subject.to_owned(),
            metric: metric.to_owned(),
            currency: currency.to_owned(),
            period,
            window_start: period.start(at),
        }
    }
}

/// A write committed in the movement's own transaction, only if the movement posts (or is held
/// for review).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideWrite {
    /// Adds `delta` to a running total (a total nobody loaded is added to in storage all the
    /// same: the addition is done by the database, never a read-modify-write of a stale value).
    Count { key: CounterKey, delta: i64 },
    /// An event row about the movement (`ledger_events`): a topic and a JSON payload that must
    /// carry no personal data in the clear.
    Event { topic: String, payload: String },
}

/// An event row the writer inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: String,
    pub tenant_id: String,
    pub topic: String,
    /// The transfer (or, for a reviewed movement, the transfer id it would have had).
    pub transfer_id: String,
    pub payload: String,
    pub created_at: i64,
}

/// KYC's figures for one currency, as configured by the tenant: tier → limits. Attached to a
/// command by the service (from its limits cache) when the movement's currency has limits; the
/// engine applies them to the facts it reads under lock (tiers, balances, running totals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KycLimits {
    pub tiers: HashMap<i64, TierLimits>,
}

/// What a pre-commit check sees: the command and the locked state before the movement.
pub struct CheckContext<'a> {
    pub command: &'a TransferCommand,
    /// The customer the movement is counted against: the explicit subject, else the customer of
    /// its (first) debit account; `None` when neither is a customer.
    pub subject: Option<&'a str>,
    pub(super) accounts: &'a HashMap<String, AccountState>,
    pub(super) counters: &'a HashMap<CounterKey, i64>,
}

impl CheckContext<'_> {
    /// An account the batch loaded, as it stands before this movement (after the batch's earlier
    /// movements).
    pub fn account(&self, id: &str) -> Option<&AccountState> {
        self.accounts.get(id)
    }

    /// A running total the check asked for in [`PreCommitCheck::counters`] (0 if it has none).
    pub fn counter(&self, key: &CounterKey) -> i64 {
        self.counters.get(key).copied().unwrap_or(0)
    }
}

/// What a pre-commit check decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckDecision {
    Allow,
    /// Refuse with an API code; the code must be one of `domain::ledger::CHECK_CODES` (so a
    /// replay of the stored refusal can name it again).
    Refuse {
        code: &'static str,
        message: String,
    },
    /// Post nothing and reserve the money in a review hold until a reviewer decides.
    Review {
        reason: String,
    },
}

/// A check's answer and the side writes it wants committed with the movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: CheckDecision,
    pub writes: Vec<SideWrite>,
}

impl Verdict {
    pub fn allow() -> Self {
        Self {
            decision: CheckDecision::Allow,
            writes: Vec::new(),
        }
    }

    pub fn of(decision: CheckDecision) -> Self {
        Self {
            decision,
            writes: Vec::new(),
        }
    }

    pub fn with(mut self, write: SideWrite) -> Self {
        self.writes.push(write);
        self
    }
}

/// A pre-commit check: transaction-monitoring rules plug in here. Every registered check sees
/// every movement (but reversals, which are corrections) inside the posting transaction, after
/// the ledger's own rules and KYC limits passed. It must be pure and fast: it runs with the
/// write lock held.
pub trait PreCommitCheck: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// The running totals this check reads for `command` (`subject` as in [`CheckContext`]):
    /// the writer loads and locks them with the snapshot.
    fn counters(&self, _command: &TransferCommand, _subject: Option<&str>) -> Vec<CounterKey> {
        Vec::new()
    }

    fn check(&self, ctx: &CheckContext<'_>) -> Verdict;

    /// Runs in the request's own task once the movement is built and authorised, before it is
    /// queued for the writer: outside the lock, for preparation too slow to hold it (it cannot
    /// refuse; what it learns reaches [`Self::check`] through the check's own state).
    fn stage(&self, _command: &TransferCommand) {}
}

/// The checks installed at the ledger's check point.
#[derive(Clone, Default)]
pub struct Checks(pub Vec<std::sync::Arc<dyn PreCommitCheck>>);

impl fmt::Debug for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|c| c.name()))
            .finish()
    }
}

impl Checks {
    pub fn iter(&self) -> impl Iterator<Item = &std::sync::Arc<dyn PreCommitCheck>> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_days_and_calendar_months() {
        // 2026-02-28T23:59:59Z and the next second.
        let last = 1_772_323_199_000_000;
        let next = last + 1_000_000;
        assert_eq!(Period::Day.end(Period::Day.start(last)), next);
        assert_ne!(Period::Month.start(last), Period::Month.start(next));
        assert_eq!(Period::Month.end(Period::Month.start(last)), next);
        assert_eq!(Period::Month.start(next), next);
        assert_eq!(Period::parse("month"), Some(Period::Month));
        assert_eq!(Period::parse("week"), None);
    }
}
