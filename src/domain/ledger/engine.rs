//! The posting engine, the ledger's rules: applies a batch of movements, in order, to a
//! snapshot of every row they touch, and returns what to write. It does no I/O. The SQL backends load the snapshot inside a
//! write transaction that already holds the locks (SQLite's write lock taken by
//! `BEGIN IMMEDIATE`; PostgreSQL row locks taken by `SELECT … FOR UPDATE` in id order), so
//! reading, checking and writing here is one atomic step: nothing can change the rows between
//! the load and the commit. The storage CHECK on the account floor stays as a last guard.
//!
//! Why a snapshot: the writer used to run about ten statements per movement. With the rows in
//! memory, a batch of hundreds of movements costs a constant dozen statements (multi-row
//! inserts and one multi-row update of the touched accounts).

use std::collections::{HashMap, HashSet};

use super::extension::{
    CheckContext, CheckDecision, Checks, CounterKey, EventRow, KycLimits, OUTGOING, Period,
    SideWrite,
};
use super::{
    AccountKind, EntryRecord, IdempotencyRecord, LedgerCommand, Movement, PlacedHold, PostResult,
    PostedTransfer, Refusal, StoredOutcome, TransferCommand, TransferKind, TransferRecord,
};
use crate::domain::audit::{NewAuditEvent, Outcome};
use crate::domain::authz::{ActorCredential, ActorStanding, still_authorised};
use crate::domain::kyc::{self, Limit};

/// The `response_status` of a key whose `response_body` is a stored outcome (the answer's HTTP
/// status is the HTTP layer's to choose); older rows hold the status of a rendered body.
pub const OUTCOME_STATUS: i64 = 0;

/// An account as loaded for posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    pub id: String,
    pub tenant_id: String,
    pub customer_id: Option<String>,
    /// `customer`, or a system kind (`settlement`, `fees`, `suspense`): which movement kinds
    /// may touch it is the table `domain::ledger::SYSTEM_ACCOUNT_MOVEMENTS`.
    pub kind: String,
    pub currency: String,
    pub status: String,
    pub posted: i64,
    pub pending_debits: i64,
    pub pending_credits: i64,
    pub overdraft_limit: i64,
    pub entry_count: i64,
    /// 1 when the account's customer has restricted the processing of its data (GDPR Art. 18):
    /// no new movement may touch the account, except a reversal (a correction).
    pub restricted: i64,
    /// The KYC tier of the account's customer (0 for a system account).
    pub kyc_tier: i64,
}

impl AccountState {
    fn can_debit(&self, amount: i64) -> bool {
        self.posted
            .checked_sub(self.pending_debits)
            .and_then(|a| a.checked_sub(amount))
            .is_some_and(|a| a >= -self.overdraft_limit)
    }
}

/// A hold as loaded for posting: one being captured, or an active one past its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldState {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub credit_account_id: Option<String>,
    pub amount: i64,
    pub status: String,
    pub expires_at: i64,
    /// `payment`, or `review` for a movement held for review (no capture may take it).
    pub purpose: String,
}

/// A movement's explicit subject customer, as loaded for posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectState {
    pub id: String,
    pub tenant_id: String,
    pub kyc_tier: i64,
    /// Whether the customer is active (not erased or closed).
    pub active: bool,
}

/// Everything a batch may read, loaded under lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub accounts: HashMap<String, AccountState>,
    /// Holds named by captures, and active holds that expire before the batch's latest time.
    pub holds: HashMap<String, HoldState>,
    /// How much of each (original transfer, account) leg has been reversed so far.
    pub reversed: HashMap<(String, String), i64>,
    /// (tenant, reference) pairs already used by committed transfers.
    pub references: HashSet<(String, String)>,
    /// Live idempotency keys (committed and not expired) by (tenant, principal, key), with
    /// their stored answers.
    pub keys: HashMap<(String, String, String), IdempotencyRecord>,
    /// The standing of every actor of the batch (user, credential), read in the posting
    /// transaction (locked on PostgreSQL); a missing one is gone.
    pub actors: HashMap<(String, ActorCredential), ActorStanding>,
    /// The explicit subject customers of the batch's movements, by id.
    pub subjects: HashMap<String, SubjectState>,
    /// The running totals the batch reads (KYC's and the checks'), locked with the accounts.
    pub counters: HashMap<CounterKey, i64>,
}

/// A hold whose status the batch changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldChange {
    pub id: String,
    pub status: &'static str,
    pub captured_transfer_id: Option<String>,
    pub updated_at: i64,
}

/// An idempotency record to insert with the batch.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub tenant_id: String,
    pub principal_id: String,
    pub key: String,
    pub request_hash: String,
    /// The outcome's facts (`StoredOutcome::encode`).
    pub body: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What a batch writes, and each movement's result.
#[derive(Debug, Default)]
pub struct Plan {
    pub results: Vec<PostResult>,
    /// Final state of every account the batch changed (with the time of its last change).
    pub accounts: Vec<(AccountState, i64)>,
    pub holds: Vec<HoldChange>,
    /// Final reversed total of every (original, account) leg the batch changed.
    pub reversed: Vec<((String, String), i64)>,
    pub keys: Vec<KeyRow>,
    pub audit: Vec<NewAuditEvent>,
    /// What to add to each running total (summed per key, in key order).
    pub counters: Vec<(CounterKey, i64)>,
    /// Event rows committed with the movements (checks' side writes).
    pub events: Vec<EventRow>,
    /// Holds to insert: those placed, and review holds (movements a check sent to review).
    pub new_holds: Vec<PlacedHold>,
}

impl Plan {
    /// The transfers to insert: those of the posted movements.
    pub fn transfers(&self) -> Vec<&TransferRecord> {
        self.posted().map(|p| &p.transfer).collect()
    }

    /// The entries to insert, every leg of every posted movement.
    pub fn entries(&self) -> Vec<&EntryRecord> {
        self.posted().flat_map(|p| &p.entries).collect()
    }

    fn posted(&self) -> impl Iterator<Item = &PostedTransfer> {
        self.results.iter().filter_map(|r| match r {
            PostResult::Posted(p) => Some(p),
            _ => None,
        })
    }

    /// Whether an atomic batch may commit: nothing was refused. A duplicate key is a retry of a
    /// movement already committed, which answers with its stored response either way.
    pub fn none_refused(&self) -> bool {
        !self
            .results
            .iter()
            .any(|r| matches!(r, PostResult::Refused(_)))
    }
}

/// Why an account cannot take part in a movement, in the order a client can act on.
#[allow(clippy::too_many_arguments)]
fn refuse_account(
    a: Option<&AccountState>,
    id: &str,
    tenant: &str,
    currency: &str,
    owner: Option<&str>,
    debit: bool,
    movement: Movement,
) -> Option<Refusal> {
    let correction = matches!(movement, Movement::Reversal(_));
    let Some(a) = a.filter(|a| a.tenant_id == tenant) else {
        return Some(Refusal::AccountNotFound(id.to_owned()));
    };
    if owner.is_some() && a.customer_id.as_deref() != owner {
        return Some(Refusal::AccountNotFound(id.to_owned()));
    }
    // System accounts take only the movement kinds declared for them, whoever asks (an unknown
    // kind is treated as a system account that takes nothing).
    if !AccountKind::parse(&a.kind).is_some_and(|k| movement.may_touch(k)) {
        return Some(Refusal::SystemAccount(id.to_owned()));
    }
    if a.currency != currency {
        return Some(Refusal::CurrencyMismatch {
            account: id.to_owned(),
            account_currency: a.currency.clone(),
            currency: currency.to_owned(),
        });
    }
    if a.status == "closed" {
        return Some(Refusal::AccountClosed(id.to_owned()));
    }
    if a.restricted != 0 && !correction {
        return Some(Refusal::ProcessingRestricted(id.to_owned()));
    }
    if debit && a.status == "frozen" {
        return Some(Refusal::AccountFrozen(id.to_owned()));
    }
    None
}

/// The working state of one batch.
struct Engine {
    snap: Snapshot,
    /// Expiring holds, soonest first, and how many of them have been expired.
    expiring: Vec<(i64, String)>,
    expired_upto: usize,
    changed_accounts: HashMap<String, i64>,
    changed_holds: HashMap<String, HoldChange>,
    changed_reversed: HashSet<(String, String)>,
    counted: HashMap<CounterKey, i64>,
    events: Vec<EventRow>,
    new_holds: Vec<PlacedHold>,
}

/// What applying one movement produced.
enum Applied {
    Posted(PostedTransfer),
    Reviewed(PlacedHold),
}

/// Who a movement's outgoing money is counted against: its explicit subject, or the customer
/// of its debit account when it sends a customer's money out. (customer, tier, what the refusal
/// names).
struct Sender<'a> {
    customer: &'a str,
    tier: i64,
    /// How a refusal names the sender: `customer <id>` or `account <id>` (formatted only then).
    named: (&'static str, &'a str),
}

fn kyc_refusal(param: String, message: String) -> Refusal {
    Refusal::KycLimit { param, message }
}

fn not_permitted(who: &str, tier: i64, currency: &str) -> Refusal {
    kyc_refusal(
        "currency".into(),
        format!(
            "KYC limit {}: {who}'s KYC tier {tier} may not send or receive {currency} (the \
             tenant has no limits for that tier in {currency})",
            Limit::CurrencyNotPermitted.as_str()
        ),
    )
}

impl Engine {
    /// Expires every loaded hold whose expiry is at or before `now`: it stops counting against
    /// its account (and its destination's pending credits) from that instant.
    fn expire_until(&mut self, now: i64) {
        while let Some((at, id)) = self.expiring.get(self.expired_upto) {
            if *at > now {
                break;
            }
            let id = id.clone();
            self.expired_upto += 1;
            let Some(h) = self.snap.holds.get_mut(&id) else {
                continue;
            };
            if h.status != "active" {
                continue;
            }
            h.status = "expired".into();
            let (acc, credit, amount) =
                (h.account_id.clone(), h.credit_account_id.clone(), h.amount);
            self.release(&acc, credit.as_deref(), amount, now);
            self.changed_holds.insert(
                id.clone(),
                HoldChange {
                    id,
                    status: "expired",
                    captured_transfer_id: None,
                    updated_at: now,
                },
            );
        }
    }

    /// Takes a hold's amount off its account's pending debits and its destination's pending
    /// credits.
    fn release(&mut self, account: &str, credit: Option<&str>, amount: i64, now: i64) {
        if let Some(a) = self.snap.accounts.get_mut(account) {
            a.pending_debits = (a.pending_debits - amount).max(0);
            self.changed_accounts.insert(account.to_owned(), now);
        }
        if let Some(c) = credit
            && let Some(a) = self.snap.accounts.get_mut(c)
        {
            a.pending_credits = (a.pending_credits - amount).max(0);
            self.changed_accounts.insert(c.to_owned(), now);
        }
    }

    /// Applies one movement, all or nothing. On refusal nothing in the snapshot has changed.
    fn apply(&mut self, m: &TransferCommand, checks: &Checks) -> Result<Applied, Refusal> {
        let now = m.created_at.as_micros();
        let tenant = m.tenant_id.as_str();
        let movement = Movement::of(m.kind, m.reverses.as_ref().map(|r| r.original_kind));
        self.expire_until(now);

        // Double entry, whoever built the command: at least one leg on each side, each side
        // summing to the amount.
        let side = |legs: &[(crate::ids::AccountId, super::Amount)]| -> Option<i64> {
            legs.iter()
                .try_fold(0i64, |sum, (_, n)| sum.checked_add(n.get()))
        };
        if m.debits.is_empty()
            || m.credits.is_empty()
            || side(&m.debits) != Some(m.amount.get())
            || side(&m.credits) != Some(m.amount.get())
        {
            return Err(Refusal::Unbalanced);
        }
        if let Some(r) = &m.reference
            && self
                .snap
                .references
                .contains(&(tenant.to_owned(), r.clone()))
        {
            return Err(Refusal::DuplicateReference(r.clone()));
        }
        // Reversals: no leg may go beyond what it received in the original.
        if let Some(rev) = &m.reverses {
            for (account, amount) in &m.debits {
                let ceiling = rev
                    .ceilings
                    .iter()
                    .find(|(a, _)| a == account)
                    .map_or(0, |(_, c)| *c);
                let done = self
                    .snap
                    .reversed
                    .get(&(rev.original.to_string(), account.to_string()))
                    .copied()
                    .unwrap_or(0);
                if done + amount.get() > ceiling {
                    return Err(Refusal::ReversalExceedsOriginal);
                }
            }
        }
        // Work on copies of the touched accounts; they replace the originals only on success.
        let mut work: HashMap<String, AccountState> = HashMap::new();
        let mut capture = None;
        if let Some(hold_id) = &m.capture_hold {
            let hold = self
                .snap
                .holds
                .get(hold_id.as_str())
                .filter(|h| h.tenant_id == tenant && h.status == "active" && h.expires_at > now)
                .cloned()
                .ok_or(Refusal::HoldNotActive)?;
            if hold.purpose == REVIEW {
                return Err(Refusal::HoldUnderReview);
            }
            if m.amount.get() > hold.amount {
                return Err(Refusal::CaptureExceedsHold);
            }
            // Capturing releases the whole hold (the rest of it is freed), then debits.
            for (id, credit) in [
                (Some(&hold.account_id), false),
                (hold.credit_account_id.as_ref(), true),
            ] {
                let Some(id) = id else { continue };
                let Some(mut a) = self.snap.accounts.get(id).cloned() else {
                    continue;
                };
                if credit {
                    a.pending_credits = (a.pending_credits - hold.amount).max(0);
                } else {
                    a.pending_debits = (a.pending_debits - hold.amount).max(0);
                }
                work.insert(id.clone(), a);
            }
            capture = Some(hold);
        }
        let mut legs = Vec::with_capacity(m.debits.len() + m.credits.len());
        let currency = m.currency.code();
        let owner = m.debit_owner.as_ref().map(crate::ids::CustomerId::as_str);
        for (id, amount) in &m.debits {
            let (id, amount) = (id.as_str(), amount.get());
            let current = work.get(id).or_else(|| self.snap.accounts.get(id));
            if let Some(r) = refuse_account(current, id, tenant, currency, owner, true, movement) {
                return Err(r);
            }
            let mut a = current
                .cloned()
                .ok_or_else(|| Refusal::AccountNotFound(id.to_owned()))?;
            if !a.can_debit(amount) {
                return Err(Refusal::InsufficientFunds(id.to_owned()));
            }
            a.posted -= amount;
            a.entry_count += 1;
            legs.push((id.to_owned(), "debit", amount, a.posted, a.entry_count));
            work.insert(id.to_owned(), a);
        }
        for (id, amount) in &m.credits {
            let (id, amount) = (id.as_str(), amount.get());
            let current = work.get(id).or_else(|| self.snap.accounts.get(id));
            if let Some(r) = refuse_account(current, id, tenant, currency, None, false, movement) {
                return Err(r);
            }
            let mut a = current
                .cloned()
                .ok_or_else(|| Refusal::AccountNotFound(id.to_owned()))?;
            a.posted = a
                .posted
                .checked_add(amount)
                .ok_or_else(|| Refusal::InsufficientFunds(id.to_owned()))?;
            a.entry_count += 1;
            legs.push((id.to_owned(), "credit", amount, a.posted, a.entry_count));
            work.insert(id.to_owned(), a);
        }

        // KYC limits and the pre-commit checks, on the facts loaded under lock. A reversal is a
        // correction: neither limits nor checks apply to it.
        let mut kyc_writes = Vec::new();
        let mut check_writes = Vec::new();
        if m.kind != TransferKind::Reversal {
            let sender = sender_of(m, &self.snap.accounts, &self.snap.subjects)?;
            if let Some(limits) = &m.kyc {
                kyc_writes = self.kyc(m, limits, sender.as_ref())?;
            }
            let subject = subject_of(m, &self.snap.accounts);
            for check in checks.iter() {
                let verdict = check.check(&CheckContext {
                    command: m,
                    subject,
                    accounts: &self.snap.accounts,
                    counters: &self.snap.counters,
                });
                check_writes.extend(verdict.writes);
                match verdict.decision {
                    CheckDecision::Allow => {}
                    CheckDecision::Refuse { code, message } => {
                        return Err(Refusal::CheckRefused { code, message });
                    }
                    CheckDecision::Review { reason } => {
                        // A capture already has its hold, and a movement with several debit
                        // legs cannot rest on one: those are refused for review instead.
                        if m.capture_hold.is_some() || m.debits.len() != 1 {
                            return Err(Refusal::CheckRefused {
                                code: "held_for_review",
                                message: format!("held for review by {}: {reason}", check.name()),
                            });
                        }
                        // KYC's totals count money that moves; a reviewed movement moves none.
                        return Ok(Applied::Reviewed(self.hold_for_review(
                            m,
                            check.name(),
                            reason,
                            check_writes,
                        )));
                    }
                }
            }
        }

        // Every check passed: commit the movement to the snapshot.
        self.side_writes(m, kyc_writes.into_iter().chain(check_writes));
        for (id, a) in work {
            self.snap.accounts.insert(id.clone(), a);
            self.changed_accounts.insert(id, now);
        }
        let transfer = TransferRecord {
            id: m.id.to_string(),
            tenant_id: tenant.to_owned(),
            kind: m.kind.as_str().to_owned(),
            currency: m.currency.code().to_owned(),
            amount: m.amount.get(),
            debit_account_id: m
                .debits
                .first()
                .map(|(a, _)| a.to_string())
                .unwrap_or_default(),
            reference: m.reference.clone(),
            details: m.details.clone(),
            reverses_id: m.reverses.as_ref().map(|r| r.original.to_string()),
            created_by: Some(m.created_by.clone()),
            created_at: now,
            subject_customer_id: m.subject.as_ref().map(ToString::to_string),
        };
        if let Some(hold) = capture {
            if let Some(h) = self.snap.holds.get_mut(&hold.id) {
                h.status = "captured".into();
            }
            self.changed_holds.insert(
                hold.id.clone(),
                HoldChange {
                    id: hold.id,
                    status: "captured",
                    captured_transfer_id: Some(transfer.id.clone()),
                    updated_at: now,
                },
            );
        }
        if let Some(rev) = &m.reverses {
            for (account, amount) in &m.debits {
                let k = (rev.original.to_string(), account.to_string());
                *self.snap.reversed.entry(k.clone()).or_insert(0) += amount.get();
                self.changed_reversed.insert(k);
            }
        }
        if let Some(r) = &m.reference {
            self.snap.references.insert((tenant.to_owned(), r.clone()));
        }
        let entries = legs
            .into_iter()
            .map(
                |(account_id, direction, amount, balance_after, account_seq)| EntryRecord {
                    system: self
                        .snap
                        .accounts
                        .get(&account_id)
                        .map(|a| a.kind.clone())
                        .filter(|k| k != AccountKind::Customer.as_str()),
                    id: crate::ids::EntryId::generate().to_string(),
                    tenant_id: tenant.to_owned(),
                    transfer_id: transfer.id.clone(),
                    account_id,
                    direction: direction.to_owned(),
                    amount,
                    balance_after,
                    account_seq,
                    created_at: now,
                },
            )
            .collect();
        Ok(Applied::Posted(PostedTransfer {
            transfer,
            entries,
            details: m.details_clear.clone(),
        }))
    }

    fn counter(&self, key: &CounterKey) -> i64 {
        self.snap.counters.get(key).copied().unwrap_or(0)
    }

    /// KYC tier limits: the sender's single-movement, daily and monthly outgoing limits (read
    /// from the running totals), and each credited customer account's balance ceiling. Returns
    /// the additions to the sender's totals.
    fn kyc(
        &self,
        m: &TransferCommand,
        limits: &KycLimits,
        sender: Option<&Sender>,
    ) -> Result<Vec<SideWrite>, Refusal> {
        let (tenant, currency) = (m.tenant_id.as_str(), m.currency.code());
        let (now, amount) = (m.created_at.as_micros(), m.amount.get());
        let mut writes = Vec::new();
        if let Some(s) = sender {
            let Some(figures) = limits.tiers.get(&s.tier) else {
                let (what, id) = s.named;
                return Err(not_permitted(&format!("{what} {id}"), s.tier, currency));
            };
            let [day, month] = [Period::Day, Period::Month]
                .map(|p| CounterKey::at(tenant, s.customer, OUTGOING, currency, p, now));
            let used = kyc::Outgoing {
                today: self.counter(&day),
                this_month: self.counter(&month),
            };
            if let Err(b) = kyc::check_outgoing(figures, used, amount) {
                let what = match b.limit {
                    Limit::MaxSingleTransfer => format!("this movement of {}", b.would_reach),
                    Limit::DailyOutgoing => {
                        format!("today's outgoing total would be {}", b.would_reach)
                    }
                    _ => format!("this month's outgoing total would be {}", b.would_reach),
                };
                return Err(kyc_refusal(
                    "amount".into(),
                    format!(
                        "KYC limit {}: tier {} allows {} {currency} minor units; {what}",
                        b.limit.as_str(),
                        s.tier,
                        b.figure.unwrap_or(0)
                    ),
                ));
            }
            writes.extend([day, month].map(|key| SideWrite::Count { key, delta: amount }));
        }
        if m.kind.brings_money_in() {
            let mut added: HashMap<&str, i64> = HashMap::new();
            for (i, (id, leg)) in m.credits.iter().enumerate() {
                let Some(a) = self.snap.accounts.get(id.as_str()) else {
                    continue;
                };
                if a.customer_id.is_none() {
                    continue;
                }
                let Some(figures) = limits.tiers.get(&a.kyc_tier) else {
                    return Err(not_permitted(
                        &format!("account {id}"),
                        a.kyc_tier,
                        currency,
                    ));
                };
                let before = added.entry(id.as_str()).or_insert(0);
                if kyc::check_incoming(figures, a.posted.saturating_add(*before), leg.get())
                    .is_err()
                {
                    let param = if m.kind == TransferKind::Transfer {
                        format!("credits[{i}].amount")
                    } else {
                        "amount".to_owned()
                    };
                    // The message names the account and the limit, never the balance (the
                    // sender may be someone else).
                    return Err(kyc_refusal(
                        param,
                        format!(
                            "KYC limit max_balance: the credit would take account {id} above \
                             the maximum balance of its KYC tier in {currency}"
                        ),
                    ));
                }
                *before = before.saturating_add(leg.get());
            }
        }
        Ok(writes)
    }

    /// Applies the side writes of a movement that posts (or is held for review).
    fn side_writes(&mut self, m: &TransferCommand, writes: impl IntoIterator<Item = SideWrite>) {
        for w in writes {
            match w {
                SideWrite::Count { key, delta } => {
                    let total = self.snap.counters.entry(key.clone()).or_insert(0);
                    *total = total.saturating_add(delta);
                    let sum = self.counted.entry(key).or_insert(0);
                    *sum = sum.saturating_add(delta);
                }
                SideWrite::Event { topic, payload } => self.events.push(EventRow {
                    id: crate::ids::LedgerEventId::generate().to_string(),
                    tenant_id: m.tenant_id.to_string(),
                    topic,
                    transfer_id: m.id.to_string(),
                    payload,
                    created_at: m.created_at.as_micros(),
                }),
            }
        }
    }

    /// Turns a movement a check sent to review into a hold on its debit account (and pending
    /// credits on its credit account when it has one): the money is reserved, nothing posts.
    /// The legs were checked (funds, states, ownership) before the checks ran.
    fn hold_for_review(
        &mut self,
        m: &TransferCommand,
        check: &'static str,
        reason: String,
        writes: Vec<SideWrite>,
    ) -> PlacedHold {
        let now = m.created_at.as_micros();
        let amount = m.amount.get();
        let debit = m
            .debits
            .first()
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
        let credit = match m.credits.as_slice() {
            [(only, _)] => Some(only.to_string()),
            _ => None,
        };
        let hold = PlacedHold {
            id: crate::ids::HoldId::generate().to_string(),
            tenant_id: m.tenant_id.to_string(),
            account_id: debit,
            credit_account_id: credit,
            currency: m.currency.code().to_owned(),
            amount,
            expires_at: now.saturating_add(super::HOLD_MAX_SECONDS * 1_000_000),
            reference: m.reference.clone(),
            created_by: m.created_by.clone(),
            created_at: now,
            purpose: REVIEW,
            review: Some((check, reason)),
        };
        self.side_writes(m, writes);
        self.add_hold(hold)
    }

    /// Places a hold: the held account must take holds (customer accounts), be active, hold the
    /// currency, belong to the owner if one is named and have the amount available; the credit
    /// account, if any, must take holds, hold the currency and be open.
    fn place_hold(&mut self, h: &super::HoldCommand) -> Result<PlacedHold, Refusal> {
        let now = h.created_at.as_micros();
        self.expire_until(now);
        let (tenant, currency, amount) = (h.tenant_id.as_str(), h.currency.code(), h.amount.get());
        let owner = h.owner.as_ref().map(crate::ids::CustomerId::as_str);
        let debit = h.account_id.as_str();
        let held = self.snap.accounts.get(debit);
        if let Some(r) = refuse_account(held, debit, tenant, currency, owner, true, Movement::Hold)
        {
            return Err(r);
        }
        if !held.is_some_and(|a| a.can_debit(amount)) {
            return Err(Refusal::InsufficientFunds(debit.to_owned()));
        }
        if let Some(c) = &h.credit_account_id {
            let c = c.as_str();
            let to = self.snap.accounts.get(c);
            if let Some(r) = refuse_account(to, c, tenant, currency, None, false, Movement::Hold) {
                return Err(r);
            }
        }
        Ok(self.add_hold(PlacedHold {
            id: h.id.to_string(),
            tenant_id: tenant.to_owned(),
            account_id: debit.to_owned(),
            credit_account_id: h.credit_account_id.as_ref().map(ToString::to_string),
            currency: currency.to_owned(),
            amount,
            expires_at: h.expires_at.as_micros(),
            reference: h.reference.clone(),
            created_by: h.created_by.clone(),
            created_at: now,
            purpose: PAYMENT,
            review: None,
        }))
    }

    /// Reserves a new hold's amount (pending debits of its account, pending credits of its
    /// destination), makes it visible to the batch's later movements (its capture, its void,
    /// its expiry in time) and records it for the writer: the reverse of [`Self::release`].
    fn add_hold(&mut self, hold: PlacedHold) -> PlacedHold {
        let now = hold.created_at;
        if let Some(a) = self.snap.accounts.get_mut(&hold.account_id) {
            a.pending_debits = a.pending_debits.saturating_add(hold.amount);
            self.changed_accounts.insert(hold.account_id.clone(), now);
        }
        if let Some(c) = &hold.credit_account_id
            && let Some(a) = self.snap.accounts.get_mut(c)
        {
            a.pending_credits = a.pending_credits.saturating_add(hold.amount);
            self.changed_accounts.insert(c.clone(), now);
        }
        self.snap.holds.insert(
            hold.id.clone(),
            HoldState {
                id: hold.id.clone(),
                tenant_id: hold.tenant_id.clone(),
                account_id: hold.account_id.clone(),
                credit_account_id: hold.credit_account_id.clone(),
                amount: hold.amount,
                status: "active".into(),
                expires_at: hold.expires_at,
                purpose: hold.purpose.into(),
            },
        );
        let at = (hold.expires_at, hold.id.clone());
        let pos =
            self.expiring[self.expired_upto..].partition_point(|e| *e < at) + self.expired_upto;
        self.expiring.insert(pos, at);
        self.new_holds.push(hold.clone());
        hold
    }

    /// Voids an active payment hold: its reservation is released on both accounts.
    fn void_hold(&mut self, v: &super::VoidHoldCommand) -> Result<String, Refusal> {
        let now = v.created_at.as_micros();
        self.expire_until(now);
        let hold = self
            .snap
            .holds
            .get(v.hold.as_str())
            .filter(|h| {
                h.tenant_id == v.tenant_id.as_str() && h.status == "active" && h.expires_at > now
            })
            .cloned()
            .ok_or(Refusal::HoldNotActive)?;
        if hold.purpose == REVIEW {
            return Err(Refusal::HoldUnderReview);
        }
        if let Some(h) = self.snap.holds.get_mut(&hold.id) {
            h.status = "voided".into();
        }
        self.release(
            &hold.account_id,
            hold.credit_account_id.as_deref(),
            hold.amount,
            now,
        );
        self.changed_holds.insert(
            hold.id.clone(),
            HoldChange {
                id: hold.id.clone(),
                status: "voided",
                captured_transfer_id: None,
                updated_at: now,
            },
        );
        Ok(hold.id)
    }
}

/// A review hold's `purpose`.
pub const REVIEW: &str = "review";
/// A hold placed through the holds API.
pub const PAYMENT: &str = "payment";

/// The customer a movement is about, as checks see it: its explicit subject, else the customer
/// of its first debit account.
pub fn subject_of<'a>(
    m: &'a TransferCommand,
    accounts: &'a HashMap<String, AccountState>,
) -> Option<&'a str> {
    match &m.subject {
        Some(s) => Some(s.as_str()),
        None => m
            .debits
            .first()
            .and_then(|(a, _)| accounts.get(a.as_str()))
            .filter(|a| a.tenant_id == m.tenant_id.as_str())
            .and_then(|a| a.customer_id.as_deref()),
    }
}

/// Who a movement's outgoing money is counted against (KYC): its explicit subject (which must
/// be an active customer of the tenant), or the customer of its debit account when the
/// movement sends a customer's money out; `None` when neither applies.
fn sender_of<'a>(
    m: &'a TransferCommand,
    accounts: &'a HashMap<String, AccountState>,
    subjects: &'a HashMap<String, SubjectState>,
) -> Result<Option<Sender<'a>>, Refusal> {
    if let Some(id) = &m.subject {
        let s = subjects
            .get(id.as_str())
            .filter(|s| s.tenant_id == m.tenant_id.as_str() && s.active)
            .ok_or_else(|| Refusal::SubjectNotFound(id.to_string()))?;
        return Ok(Some(Sender {
            customer: &s.id,
            tier: s.kyc_tier,
            named: ("customer", id.as_str()),
        }));
    }
    if !m.kind.sends_money_out() {
        return Ok(None);
    }
    let Some((id, _)) = m.debits.first() else {
        return Ok(None);
    };
    Ok(accounts
        .get(id.as_str())
        .filter(|a| a.tenant_id == m.tenant_id.as_str() && a.currency == m.currency.code())
        .and_then(|a| {
            Some(Sender {
                customer: a.customer_id.as_deref()?,
                tier: a.kyc_tier,
                named: ("account", id.as_str()),
            })
        }))
}

/// The running totals a batch reads, once its accounts and subjects are loaded: KYC's outgoing
/// totals of every sender whose currency has limits, and what each check asks for. Sorted (the
/// order PostgreSQL locks them in, after the accounts).
pub fn counters_to_load(
    batch: &[LedgerCommand],
    accounts: &HashMap<String, AccountState>,
    subjects: &HashMap<String, SubjectState>,
    checks: &Checks,
) -> Vec<CounterKey> {
    let mut keys = Vec::new();
    let transfers = batch.iter().filter_map(|c| match c {
        LedgerCommand::Transfer(m) => Some(m),
        _ => None,
    });
    for m in transfers.filter(|m| m.kind != TransferKind::Reversal) {
        if m.kyc.is_some()
            && let Ok(Some(s)) = sender_of(m, accounts, subjects)
        {
            let at = m.created_at.as_micros();
            keys.extend([Period::Day, Period::Month].map(|p| {
                CounterKey::at(
                    m.tenant_id.as_str(),
                    s.customer,
                    OUTGOING,
                    m.currency.code(),
                    p,
                    at,
                )
            }));
        }
        let subject = subject_of(m, accounts);
        for c in checks.iter() {
            keys.extend(c.counters(m, subject));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Records an idempotency key with its outcome, in the snapshot (a later use in the batch is a
/// duplicate) and for the writer.
fn record_key(
    engine: &mut Engine,
    out: &mut Plan,
    c: &LedgerCommand,
    idem: &super::NewIdempotency,
    slot: (String, String, String),
    outcome: StoredOutcome,
) {
    let body = outcome.encode();
    engine.snap.keys.insert(
        slot,
        IdempotencyRecord {
            request_hash: idem.request_hash.clone(),
            response_status: OUTCOME_STATUS,
            response_body: body.clone(),
        },
    );
    out.keys.push(KeyRow {
        tenant_id: c.tenant_id().to_string(),
        principal_id: idem.principal_id.clone(),
        key: idem.key.clone(),
        request_hash: idem.request_hash.clone(),
        body,
        created_at: c.created_at().as_micros(),
        expires_at: idem.expires_at.as_micros(),
    });
}

/// Applies `batch` in order to `snap`. A movement whose idempotency key is already live (or was
/// used earlier in the batch) is a `DuplicateKey` and changes nothing; every other movement is
/// posted or refused, and either way its key is recorded with the rendered answer and an audit
/// event with its outcome is appended.
pub fn plan(snap: Snapshot, batch: &[LedgerCommand], checks: &Checks) -> Plan {
    let mut expiring: Vec<(i64, String)> = snap
        .holds
        .values()
        .filter(|h| h.status == "active")
        .map(|h| (h.expires_at, h.id.clone()))
        .collect();
    expiring.sort();
    let mut engine = Engine {
        snap,
        expiring,
        expired_upto: 0,
        changed_accounts: HashMap::new(),
        changed_holds: HashMap::new(),
        changed_reversed: HashSet::new(),
        counted: HashMap::new(),
        events: Vec::new(),
        new_holds: Vec::new(),
    };
    let mut out = Plan::default();
    for c in batch {
        let quiet = matches!(c, LedgerCommand::Transfer(m) if m.quiet_refusal);
        // The actor first: a command whose actor lost the right to it since its request was
        // authorised writes nothing (no key either: the answer is about the credential, not
        // the request), and its refusal is an authorisation refusal.
        if let Some(a) = c.actor() {
            let standing = engine
                .snap
                .actors
                .get(&(a.user_id.clone(), a.credential.clone()));
            let refusal = match still_authorised(&a.roles, standing) {
                Err(r) => Some((
                    Refusal::ActorRevoked(r),
                    crate::domain::security::SecurityEvent::AuthorizationRefused,
                )),
                // Step-up, on everything that moves money out (or reserves it): the threshold
                // came with the actor's check, the last authentication is read under lock.
                Ok(()) => a
                    .step_up
                    .as_ref()
                    .zip(c.outgoing())
                    .filter(|(rule, (currency, amount))| {
                        !rule.allows(
                            currency.code(),
                            amount.get(),
                            standing.and_then(|s| s.authenticated_at),
                            c.created_at().as_micros(),
                        )
                    })
                    .map(|_| {
                        (
                            Refusal::StepUpRequired {
                                session: matches!(a.credential, ActorCredential::Session(_)),
                            },
                            crate::domain::security::SecurityEvent::StepUpRequired,
                        )
                    }),
            };
            if let Some((refusal, event)) = refusal {
                if !quiet {
                    out.audit.push(NewAuditEvent {
                        outcome: Outcome::Denied,
                        reason: Some(refusal.code().to_owned()),
                        security_event: Some(event),
                        ..c.audit().clone()
                    });
                }
                out.results.push(PostResult::Refused(refusal));
                continue;
            }
        }
        let slot = c.idempotency().map(|k| {
            (
                c.tenant_id().to_string(),
                k.principal_id.clone(),
                k.key.clone(),
            )
        });
        if let Some(stored) = slot.as_ref().and_then(|k| engine.snap.keys.get(k)) {
            out.results.push(PostResult::DuplicateKey(stored.clone()));
            continue;
        }
        let m = match c {
            LedgerCommand::Transfer(m) => m,
            LedgerCommand::PlaceHold(h) => {
                // A hold's refusal is not recorded with its key (the request can be retried
                // once the account allows it) and is audited by the service's refusal budget.
                let result = match engine.place_hold(h) {
                    Ok(placed) => {
                        out.audit.push(h.audit.clone());
                        if let (Some(idem), Some(slot)) = (&h.idempotency, slot) {
                            record_key(
                                &mut engine,
                                &mut out,
                                c,
                                idem,
                                slot,
                                StoredOutcome::Hold(placed.id.clone()),
                            );
                        }
                        PostResult::HoldPlaced(placed)
                    }
                    Err(r) => PostResult::Refused(r),
                };
                out.results.push(result);
                continue;
            }
            LedgerCommand::VoidHold(v) => {
                let result = match engine.void_hold(v) {
                    Ok(id) => {
                        out.audit.push(v.audit.clone());
                        PostResult::HoldVoided(id)
                    }
                    Err(r) => PostResult::Refused(r),
                };
                out.results.push(result);
                continue;
            }
        };
        let outcome = engine.apply(m, checks);
        match &outcome {
            Ok(Applied::Posted(_)) => out.audit.push(m.audit.clone()),
            Ok(Applied::Reviewed(h)) => out.audit.push(NewAuditEvent {
                reason: Some("held_for_review".to_owned()),
                target_type: Some("hold".to_owned()),
                target_id: Some(h.id.clone()),
                ..m.audit.clone()
            }),
            Err(_) if m.quiet_refusal => {}
            Err(refusal) => out.audit.push(NewAuditEvent {
                outcome: Outcome::Failure,
                reason: Some(refusal.code().to_owned()),
                ..m.audit.clone()
            }),
        }
        if let (Some(idem), Some(slot)) = (&m.idempotency, slot) {
            // The outcome's facts, not a rendered answer: the HTTP layer renders a replay.
            let stored = match &outcome {
                Ok(Applied::Posted(p)) => StoredOutcome::Transfer(p.transfer.id.clone()),
                Ok(Applied::Reviewed(h)) => StoredOutcome::Hold(h.id.clone()),
                Err(r) => StoredOutcome::Refused(r.clone()),
            };
            record_key(&mut engine, &mut out, c, idem, slot, stored);
        }
        out.results.push(match outcome {
            Ok(Applied::Posted(p)) => PostResult::Posted(p),
            Ok(Applied::Reviewed(h)) => PostResult::Reviewed(h),
            Err(r) => PostResult::Refused(r),
        });
    }
    let Engine {
        snap,
        changed_accounts,
        changed_holds,
        changed_reversed,
        counted,
        events,
        new_holds,
        ..
    } = engine;
    let mut counters: Vec<(CounterKey, i64)> = counted.into_iter().collect();
    counters.sort();
    out.counters = counters;
    out.events = events;
    out.new_holds = new_holds;
    let mut accounts: Vec<(AccountState, i64)> = changed_accounts
        .into_iter()
        .filter_map(|(id, at)| snap.accounts.get(&id).map(|a| (a.clone(), at)))
        .collect();
    accounts.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    out.accounts = accounts;
    let mut holds: Vec<HoldChange> = changed_holds.into_values().collect();
    holds.sort_by(|a, b| a.id.cmp(&b.id));
    out.holds = holds;
    let mut reversed: Vec<((String, String), i64)> = changed_reversed
        .into_iter()
        .map(|k| {
            let v = snap.reversed.get(&k).copied().unwrap_or(0);
            (k, v)
        })
        .collect();
    reversed.sort();
    out.reversed = reversed;
    out
}

/// The ids a batch needs loaded: accounts of every leg, holds it captures, reversal legs,
/// references and idempotency keys.
pub struct Wanted {
    pub accounts: Vec<String>,
    pub holds: Vec<String>,
    pub reversals: Vec<String>,
    /// (tenant, reference)
    pub references: Vec<(String, String)>,
    /// (tenant, principal, key)
    pub keys: Vec<(String, String, String)>,
    /// The latest movement time in the batch: active holds expiring by then are loaded too.
    pub latest: i64,
    /// The distinct actors (user, credential): one look-up each.
    pub actors: Vec<(String, ActorCredential)>,
    /// The explicit subject customers.
    pub subjects: Vec<String>,
}

/// Every account a batch must load: its legs' accounts and both accounts of every hold it may
/// release, sorted (the order PostgreSQL locks them in).
pub fn accounts_to_load(want: &Wanted, holds: &[HoldState]) -> Vec<String> {
    let mut ids = want.accounts.clone();
    for h in holds {
        ids.push(h.account_id.clone());
        ids.extend(h.credit_account_id.iter().cloned());
    }
    ids.sort();
    ids.dedup();
    ids
}

pub fn wanted(batch: &[LedgerCommand]) -> Wanted {
    let mut accounts = Vec::new();
    let mut holds = Vec::new();
    let mut reversals = Vec::new();
    let mut references = Vec::new();
    let mut keys = Vec::new();
    let mut actors = Vec::new();
    let mut subjects = Vec::new();
    let mut latest = i64::MIN;
    for c in batch {
        actors.extend(c.actor().map(|a| (a.user_id.clone(), a.credential.clone())));
        let tenant = c.tenant_id().to_string();
        keys.extend(
            c.idempotency()
                .map(|k| (tenant.clone(), k.principal_id.clone(), k.key.clone())),
        );
        latest = latest.max(c.created_at().as_micros());
        let m = match c {
            LedgerCommand::Transfer(m) => m,
            LedgerCommand::PlaceHold(h) => {
                accounts.push(h.account_id.to_string());
                accounts.extend(h.credit_account_id.iter().map(ToString::to_string));
                continue;
            }
            LedgerCommand::VoidHold(v) => {
                holds.push(v.hold.to_string());
                continue;
            }
        };
        subjects.extend(m.subject.iter().map(ToString::to_string));
        accounts.extend(m.debits.iter().map(|(a, _)| a.to_string()));
        accounts.extend(m.credits.iter().map(|(a, _)| a.to_string()));
        holds.extend(m.capture_hold.iter().map(ToString::to_string));
        reversals.extend(m.reverses.iter().map(|r| r.original.to_string()));
        references.extend(m.reference.iter().map(|r| (tenant.clone(), r.clone())));
    }
    for v in [&mut accounts, &mut holds, &mut reversals, &mut subjects] {
        v.sort();
        v.dedup();
    }
    references.sort();
    references.dedup();
    keys.sort();
    keys.dedup();
    actors.sort();
    actors.dedup();
    Wanted {
        actors,
        subjects,
        accounts,
        holds,
        reversals,
        references,
        keys,
        latest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::domain::audit::ActorType;
    use crate::domain::ledger::TransferKind;
    use crate::domain::ledger::extension::{CheckContext, CheckDecision};
    use crate::domain::ledger::{NewIdempotency, Reverses};
    use crate::ids::{TenantId, TransferId};

    fn account(id: &str, posted: i64) -> AccountState {
        AccountState {
            id: id.into(),
            tenant_id: "ten_a".into(),
            customer_id: None,
            kind: "customer".into(),
            currency: "USD".into(),
            status: "active".into(),
            posted,
            pending_debits: 0,
            pending_credits: 0,
            overdraft_limit: 0,
            entry_count: 0,
            restricted: 0,
            kyc_tier: 0,
        }
    }

    fn movement(from: &str, to: &str, amount: i64, at: i64) -> TransferCommand {
        let tenant = TenantId::from_trusted("ten_a".into());
        TransferCommand {
            id: TransferId::generate(),
            tenant_id: tenant.clone(),
            kind: TransferKind::Transfer,
            currency: usd(),
            amount: amt(amount),
            debits: legs(&[(from, amount)]),
            debit_owner: None,
            credits: legs(&[(to, amount)]),
            reference: None,
            details: None,
            details_clear: None,
            created_by: "usr_x".into(),
            created_at: Timestamp::from_micros(at),
            audit: NewAuditEvent {
                tenant_id: Some(tenant.clone()),
                occurred_at: Timestamp::from_micros(at),
                actor_type: ActorType::User,
                actor_id: Some("usr_x".into()),
                action: "transfer.create".into(),
                target_type: None,
                target_id: None,
                outcome: Outcome::Success,
                reason: None,
                ip: None,
                request_id: None,
                security_event: None,
            },
            idempotency: None,
            reverses: None,
            capture_hold: None,
            quiet_refusal: false,
            actor: None,
            kyc: None,
            subject: None,
        }
    }

    /// The core's `plan` over money movements only.
    fn plan(snap: Snapshot, batch: &[TransferCommand], checks: &Checks) -> Plan {
        let batch: Vec<LedgerCommand> =
            batch.iter().cloned().map(LedgerCommand::Transfer).collect();
        super::plan(snap, &batch, checks)
    }

    fn acc(id: &str) -> crate::ids::AccountId {
        crate::ids::AccountId::from_trusted(id.to_owned())
    }

    fn amt(n: i64) -> crate::domain::ledger::Amount {
        crate::domain::ledger::Amount::parse(n).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn usd() -> crate::domain::currency::Currency {
        crate::domain::currency::Currency::parse("USD").unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn legs(ls: &[(&str, i64)]) -> Vec<(crate::ids::AccountId, crate::domain::ledger::Amount)> {
        ls.iter().map(|(a, n)| (acc(a), amt(*n))).collect()
    }

    fn snapshot(accounts: &[AccountState]) -> Snapshot {
        Snapshot {
            accounts: accounts.iter().map(|a| (a.id.clone(), a.clone())).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn movements_in_one_batch_see_each_others_balances() {
        let snap = snapshot(&[account("acc_a", 100), account("acc_b", 0)]);
        let batch = [
            movement("acc_a", "acc_b", 60, 1),
            movement("acc_a", "acc_b", 60, 2),
        ];
        let p = plan(snap, &batch, &Checks::default());
        assert!(matches!(p.results[0], PostResult::Posted(_)));
        assert!(matches!(
            p.results[1],
            PostResult::Refused(Refusal::InsufficientFunds(_))
        ));
        let a = p
            .accounts
            .iter()
            .find(|(a, _)| a.id == "acc_a")
            .map(|(a, _)| a.posted);
        assert_eq!(a, Some(40));
        assert_eq!(p.entries().len(), 2);
        assert_eq!(p.audit.len(), 2);
        assert_eq!(p.audit[1].outcome, Outcome::Failure);
    }

    #[test]
    fn a_refused_leg_leaves_every_account_untouched() {
        let mut frozen = account("acc_c", 0);
        frozen.status = "closed".into();
        let snap = snapshot(&[account("acc_a", 100), account("acc_b", 0), frozen]);
        let mut m = movement("acc_a", "acc_b", 50, 1);
        m.credits = legs(&[("acc_b", 25), ("acc_c", 25)]);
        let p = plan(snap, &[m], &Checks::default());
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::AccountClosed(_))
        ));
        assert!(p.accounts.is_empty() && p.entries().is_empty() && p.transfers().is_empty());
    }

    #[test]
    fn a_revoked_actors_movements_are_refused_and_the_rest_of_the_batch_posts() {
        use crate::domain::authz::ActorCheck;
        use crate::domain::authz::{ActorRevoked, Role};
        let actor = |user: &str| ActorCheck {
            user_id: user.into(),
            credential: ActorCredential::Session(format!("ses_{user}")),
            roles: vec![Role::Manager],
            step_up: None,
        };
        let mut snap = snapshot(&[account("acc_a", 100), account("acc_b", 0)]);
        for (user, status, roles) in [
            ("usr_ok", "active", "MANAGER"),
            ("usr_demoted", "active", "AUDITOR"),
            ("usr_off", "disabled", "MANAGER"),
        ] {
            snap.actors.insert(
                (user.into(), ActorCredential::Session(format!("ses_{user}"))),
                ActorStanding {
                    user_status: status.into(),
                    roles: roles.into(),
                    credential_live: true,
                    tenant_active: true,
                    authenticated_at: None,
                },
            );
        }
        let mut batch = Vec::new();
        for (i, user) in ["usr_demoted", "usr_ok", "usr_off", "usr_gone"]
            .iter()
            .enumerate()
        {
            let mut m = movement("acc_a", "acc_b", 10, i as i64);
            m.actor = Some(actor(user));
            m.idempotency = Some(NewIdempotency {
                principal_id: (*user).into(),
                key: format!("k{i}"),
                request_hash: "h".into(),
                expires_at: Timestamp::from_micros(100),
            });
            batch.push(m);
        }
        let p = plan(snap, &batch, &Checks::default());
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::ActorRevoked(ActorRevoked::RolesChanged))
        ));
        assert!(matches!(p.results[1], PostResult::Posted(_)));
        for r in &p.results[2..] {
            assert!(matches!(
                r,
                PostResult::Refused(Refusal::ActorRevoked(ActorRevoked::CredentialEnded))
            ));
        }
        // Only the authorised movement wrote anything: its transfer and its key.
        assert_eq!(p.transfers().len(), 1);
        assert_eq!(p.keys.len(), 1);
        assert!(
            p.audit
                .iter()
                .filter(|e| e.outcome == Outcome::Denied)
                .all(|e| e.security_event.is_some())
        );
    }

    #[test]
    fn a_key_used_twice_in_one_batch_posts_once() {
        let snap = snapshot(&[account("acc_a", 100), account("acc_b", 0)]);
        let key = NewIdempotency {
            principal_id: "usr_x".into(),
            key: "k1".into(),
            request_hash: "h".into(),
            expires_at: Timestamp::from_micros(10),
        };
        let mut m1 = movement("acc_a", "acc_b", 10, 1);
        m1.idempotency = Some(key.clone());
        let mut m2 = movement("acc_a", "acc_b", 10, 2);
        m2.idempotency = Some(key);
        let p = plan(snap, &[m1, m2], &Checks::default());
        let PostResult::DuplicateKey(stored) = &p.results[1] else {
            unreachable!("expected a duplicate, got {:?}", p.results[1])
        };
        let PostResult::Posted(first) = &p.results[0] else {
            unreachable!("expected a posting, got {:?}", p.results[0])
        };
        assert_eq!(
            StoredOutcome::decode(&stored.response_body),
            Some(StoredOutcome::Transfer(first.transfer.id.clone()))
        );
        assert_eq!(p.transfers().len(), 1);
        assert_eq!(p.keys.len(), 1);
    }

    #[test]
    fn a_command_whose_legs_do_not_balance_is_never_posted() {
        let snap = || snapshot(&[account("acc_a", 100), account("acc_b", 0)]);
        let mut no_credit = movement("acc_a", "acc_b", 10, 1);
        no_credit.credits.clear();
        let mut short = movement("acc_a", "acc_b", 10, 1);
        short.credits = legs(&[("acc_b", 9)]);
        for m in [no_credit, short] {
            let p = plan(snap(), &[m], &Checks::default());
            assert!(matches!(
                p.results[0],
                PostResult::Refused(Refusal::Unbalanced)
            ));
            assert!(p.accounts.is_empty() && p.entries().is_empty());
        }
    }

    #[test]
    fn another_tenants_account_is_not_found() {
        let mut other = account("acc_b", 0);
        other.tenant_id = "ten_b".into();
        let p = plan(
            snapshot(&[account("acc_a", 100), other]),
            &[movement("acc_a", "acc_b", 1, 1)],
            &Checks::default(),
        );
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::AccountNotFound(_))
        ));
    }

    #[test]
    fn an_expired_hold_stops_counting_at_its_expiry() {
        let mut a = account("acc_a", 100);
        a.pending_debits = 100;
        let mut snap = snapshot(&[a, account("acc_b", 0)]);
        snap.holds.insert(
            "hld_1".into(),
            HoldState {
                id: "hld_1".into(),
                tenant_id: "ten_a".into(),
                account_id: "acc_a".into(),
                credit_account_id: None,
                amount: 100,
                status: "active".into(),
                expires_at: 5,
                purpose: "payment".into(),
            },
        );
        // Before the expiry the hold counts; at it, it no longer does.
        let p = plan(
            snap,
            &[
                movement("acc_a", "acc_b", 100, 4),
                movement("acc_a", "acc_b", 100, 5),
            ],
            &Checks::default(),
        );
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::InsufficientFunds(_))
        ));
        assert!(matches!(p.results[1], PostResult::Posted(_)));
        assert_eq!(p.holds.first().map(|h| h.status), Some("expired"));
    }

    #[test]
    fn reversals_never_exceed_a_leg() {
        let snap = snapshot(&[
            account("acc_a", 0),
            account("acc_b", 100),
            account("acc_c", 100),
        ]);
        let mut r = movement("acc_b", "acc_a", 80, 1);
        r.kind = TransferKind::Reversal;
        r.debits = legs(&[("acc_b", 40), ("acc_c", 40)]);
        r.reverses = Some(Reverses {
            original: TransferId::from_trusted("trf_o".into()),
            original_kind: TransferKind::Transfer,
            ceilings: vec![(acc("acc_b"), 50), (acc("acc_c"), 30)],
        });
        let p = plan(snap, &[r], &Checks::default());
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::ReversalExceedsOriginal)
        ));
    }

    #[test]
    fn system_accounts_take_only_their_declared_movements() {
        let mut settlement = account("acc_s", 0);
        settlement.kind = "settlement".into();
        settlement.overdraft_limit = i64::MAX / 2;
        let snap = || snapshot(&[settlement.clone(), account("acc_c", 0)]);
        // An ordinary transfer out of settlement creates money: refused.
        let p = plan(
            snap(),
            &[movement("acc_s", "acc_c", 10, 1)],
            &Checks::default(),
        );
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::SystemAccount(_))
        ));
        // A deposit is the declared way in.
        let mut d = movement("acc_s", "acc_c", 10, 1);
        d.kind = TransferKind::Deposit;
        assert!(matches!(
            plan(snap(), &[d], &Checks::default()).results[0],
            PostResult::Posted(_)
        ));
        // A capture or a reversal of a transfer may not touch it either.
        let mut c = movement("acc_s", "acc_c", 10, 1);
        c.kind = TransferKind::Capture;
        assert!(matches!(
            plan(snap(), &[c], &Checks::default()).results[0],
            PostResult::Refused(Refusal::SystemAccount(_))
        ));
        let mut fees = account("acc_f", 100);
        fees.kind = "fees".into();
        let p = plan(
            snapshot(&[fees, account("acc_c", 10)]),
            &[movement("acc_c", "acc_f", 1, 1)],
            &Checks::default(),
        );
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::SystemAccount(_))
        ));
    }

    fn limits(daily: i64) -> std::sync::Arc<KycLimits> {
        std::sync::Arc::new(KycLimits {
            tiers: [(
                0,
                crate::domain::kyc::TierLimits {
                    daily_outgoing: Some(daily),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
        })
    }

    #[test]
    fn an_explicit_subject_is_counted_and_must_be_a_customer_of_the_tenant() {
        let mut settlement = account("acc_s", 0);
        settlement.kind = "settlement".into();
        settlement.overdraft_limit = SETTLEMENT_OVERDRAFT_FOR_TESTS;
        let mut payee = account("acc_b", 0);
        payee.customer_id = Some("cus_b".into());
        let mut snap = snapshot(&[settlement, payee]);
        let walk_in = |tenant: &str, active: bool| SubjectState {
            id: "cus_x".into(),
            tenant_id: tenant.into(),
            kyc_tier: 0,
            active,
        };
        snap.subjects.insert("cus_x".into(), walk_in("ten_a", true));
        // Cash paid in by a walk-in customer for someone else's account: the walk-in's limits.
        let cash = |amount: i64, at: i64| {
            let mut m = movement("acc_s", "acc_b", amount, at);
            m.kind = TransferKind::Deposit;
            m.subject = Some(crate::ids::CustomerId::from_trusted("cus_x".into()));
            m.kyc = Some(limits(500));
            m
        };
        let p = plan(snap, &[cash(400, 1), cash(200, 2)], &Checks::default());
        assert!(matches!(p.results[0], PostResult::Posted(_)));
        assert!(
            matches!(&p.results[1], PostResult::Refused(Refusal::KycLimit { param, .. }) if param == "amount"),
            "{:?}",
            p.results[1]
        );
        let day = CounterKey::at("ten_a", "cus_x", OUTGOING, "USD", Period::Day, 1);
        assert!(p.counters.contains(&(day, 400)), "{:?}", p.counters);
        assert_eq!(
            p.posted()
                .next()
                .map(|t| t.transfer.subject_customer_id.clone()),
            Some(Some("cus_x".into()))
        );
        // Another tenant's customer, or an erased one, is not a subject.
        for s in [walk_in("ten_b", true), walk_in("ten_a", false)] {
            let mut snap = snapshot(&[account("acc_s", 0), account("acc_b", 0)]);
            if let Some(a) = snap.accounts.get_mut("acc_s") {
                a.kind = "settlement".into();
                a.overdraft_limit = SETTLEMENT_OVERDRAFT_FOR_TESTS;
            }
            snap.subjects.insert("cus_x".into(), s);
            let p = plan(snap, &[cash(1, 1)], &Checks::default());
            assert!(matches!(
                p.results[0],
                PostResult::Refused(Refusal::SubjectNotFound(_))
            ));
        }
    }

    /// Refuses everything, asking for an event and a count it must not get.
    struct Refuser;

    impl crate::domain::ledger::PreCommitCheck for Refuser {
        fn name(&self) -> &'static str {
            "refuser"
        }
        fn check(&self, ctx: &CheckContext<'_>) -> crate::domain::ledger::Verdict {
            crate::domain::ledger::Verdict::of(CheckDecision::Refuse {
                code: "kyc_limit_exceeded",
                message: "no".into(),
            })
            .with(SideWrite::Event {
                topic: "t".into(),
                payload: "{}".into(),
            })
            .with(SideWrite::Count {
                key: CounterKey::at("ten_a", "cus_a", "m", "USD", Period::Day, 0),
                delta: ctx.command.amount.get(),
            })
        }
    }

    #[test]
    fn a_refused_movement_commits_none_of_its_side_writes() {
        let snap = snapshot(&[account("acc_a", 100), account("acc_b", 0)]);
        let checks = Checks(vec![std::sync::Arc::new(Refuser)]);
        let p = plan(snap, &[movement("acc_a", "acc_b", 10, 1)], &checks);
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::CheckRefused { .. })
        ));
        assert!(p.events.is_empty() && p.counters.is_empty() && p.accounts.is_empty());
    }

    #[test]
    fn a_reviewed_movement_is_held_and_no_capture_takes_its_hold() {
        let snap = snapshot(&[account("acc_a", 100), account("acc_b", 0)]);
        let checks = Checks(vec![std::sync::Arc::new(Sevens)]);
        let p = plan(snap, &[movement("acc_a", "acc_b", 70, 1)], &checks);
        let PostResult::Reviewed(h) = &p.results[0] else {
            unreachable!("{:?}", p.results[0])
        };
        assert_eq!(h.amount, 70);
        assert_eq!(h.review.as_ref().map(|r| r.0), Some("sevens"));
        assert_eq!(h.credit_account_id.as_deref(), Some("acc_b"));
        assert!(p.transfers().is_empty() && p.entries().is_empty());
        let a = p.accounts.iter().find(|(a, _)| a.id == "acc_a");
        assert_eq!(
            a.map(|(a, _)| (a.posted, a.pending_debits)),
            Some((100, 70))
        );
        assert_eq!(p.events.len(), 1, "the reviewing check's event is kept");
        assert_eq!(p.keys.len(), 0);
        // Captured in a later batch: refused whoever asks.
        let mut a = account("acc_a", 100);
        a.pending_debits = 70;
        let mut snap = snapshot(&[a, account("acc_b", 0)]);
        snap.holds.insert(
            h.id.clone(),
            HoldState {
                id: h.id.clone(),
                tenant_id: "ten_a".into(),
                account_id: "acc_a".into(),
                credit_account_id: Some("acc_b".into()),
                amount: 70,
                status: "active".into(),
                expires_at: h.expires_at,
                purpose: REVIEW.into(),
            },
        );
        let mut capture = movement("acc_a", "acc_b", 70, 2);
        capture.kind = TransferKind::Capture;
        capture.capture_hold = Some(crate::ids::HoldId::from_trusted(h.id.clone()));
        let p = plan(snap, &[capture], &Checks::default());
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::HoldUnderReview)
        ));
    }

    fn place(id: &str, from: &str, to: Option<&str>, amount: i64, at: i64) -> LedgerCommand {
        let m = movement(from, to.unwrap_or(from), amount, at);
        LedgerCommand::PlaceHold(crate::domain::ledger::HoldCommand {
            id: crate::ids::HoldId::from_trusted(id.into()),
            tenant_id: m.tenant_id.clone(),
            account_id: acc(from),
            owner: None,
            credit_account_id: to.map(acc),
            currency: usd(),
            amount: amt(amount),
            expires_at: Timestamp::from_micros(at + 1_000),
            reference: None,
            created_by: "usr_x".into(),
            created_at: Timestamp::from_micros(at),
            audit: m.audit,
            idempotency: None,
            actor: None,
        })
    }

    fn void(id: &str, at: i64) -> LedgerCommand {
        let m = movement("acc_a", "acc_b", 1, at);
        LedgerCommand::VoidHold(crate::domain::ledger::VoidHoldCommand {
            tenant_id: m.tenant_id,
            hold: crate::ids::HoldId::from_trusted(id.into()),
            created_at: Timestamp::from_micros(at),
            audit: m.audit,
            actor: None,
        })
    }

    #[test]
    fn holds_are_placed_and_voided_by_the_core_like_any_movement() {
        let mut settlement = account("acc_s", 0);
        settlement.kind = "settlement".into();
        let snap = snapshot(&[account("acc_a", 100), account("acc_b", 0), settlement]);
        let batch = [
            place("hld_1", "acc_a", Some("acc_b"), 70, 1),
            // The hold's 70 is no longer available to a transfer or another hold.
            LedgerCommand::Transfer(movement("acc_a", "acc_b", 40, 2)),
            place("hld_2", "acc_a", None, 40, 3),
            // No hold rests on (or is destined for) a system account.
            place("hld_3", "acc_a", Some("acc_s"), 1, 4),
            void("hld_1", 5),
            void("hld_1", 6),
            // Voided: the money is available again.
            LedgerCommand::Transfer(movement("acc_a", "acc_b", 40, 7)),
        ];
        let p = super::plan(snap, &batch, &Checks::default());
        let codes: Vec<&str> = p
            .results
            .iter()
            .map(|r| match r {
                PostResult::HoldPlaced(_) => "placed",
                PostResult::HoldVoided(_) => "voided",
                PostResult::Posted(_) => "posted",
                PostResult::Refused(r) => r.code(),
                _ => "other",
            })
            .collect();
        assert_eq!(
            codes,
            [
                "placed",
                "insufficient_funds",
                "insufficient_funds",
                "system_account",
                "voided",
                "hold_not_active",
                "posted"
            ]
        );
        let state = |id: &str| {
            p.accounts
                .iter()
                .find(|(a, _)| a.id == id)
                .map(|(a, _)| (a.posted, a.pending_debits, a.pending_credits))
        };
        assert_eq!(state("acc_a"), Some((60, 0, 0)));
        assert_eq!(state("acc_b"), Some((40, 0, 0)));
        assert_eq!(p.new_holds.len(), 1);
        assert_eq!(p.holds.len(), 1, "{:?}", p.holds);
        assert_eq!(p.holds[0].status, "voided");
        // Placed, the refused transfer, voided, posted: a refused hold is audited by the
        // service's refusal budget, not here.
        assert_eq!(p.audit.len(), 4);
    }

    /// A tiny deterministic generator (xorshift64*): property runs need no extra crate and
    /// replay from their seed.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[usize::try_from(self.below(xs.len() as u64)).unwrap_or(0)]
        }
    }

    /// A check that sends every movement whose amount is a multiple of 7 to review, with an
    /// event, and lets every other through with an event.
    struct Sevens;

    impl crate::domain::ledger::PreCommitCheck for Sevens {
        fn name(&self) -> &'static str {
            "sevens"
        }
        fn check(&self, ctx: &CheckContext<'_>) -> crate::domain::ledger::Verdict {
            use crate::domain::ledger::Verdict;
            let event = SideWrite::Event {
                topic: "checked".into(),
                payload: "{}".into(),
            };
            if ctx.command.amount.get() % 7 == 0 {
                Verdict::of(CheckDecision::Review {
                    reason: "sevens".into(),
                })
                .with(event)
            } else {
                Verdict::allow().with(event)
            }
        }
    }

    /// The model: the ledger's rules written as plainly as possible, one movement at a time,
    /// over balances, running totals and keys. The engine must agree with it on every outcome,
    /// every balance and every total.
    #[derive(Default)]
    struct Model {
        accounts: HashMap<String, AccountState>,
        /// Idempotency keys per credential: (principal, key).
        keys: HashSet<(String, String)>,
        /// Outgoing totals per customer: (day, month).
        totals: HashMap<String, (i64, i64)>,
        /// Additions the batch made to each total.
        added: HashMap<String, i64>,
        reviews: bool,
    }

    impl Model {
        fn apply(&mut self, m: &TransferCommand) -> Option<&'static str> {
            // Step-up: money leaving an account above 150 needs a fresh authentication (only
            // `usr_fresh`'s session has one; an API token never does).
            if let Some(a) = &m.actor
                && a.step_up.is_some()
                && matches!(m.kind, TransferKind::Transfer | TransferKind::Withdrawal)
                && m.amount.get() > 150
                && a.user_id != "usr_fresh"
            {
                return Some("step_up_required");
            }
            if let Some(k) = &m.idempotency
                && !self.keys.insert((k.principal_id.clone(), k.key.clone()))
            {
                return Some("duplicate");
            }
            let movement = Movement::of(m.kind, None);
            let legs: Vec<(&str, i64, bool)> = m
                .debits
                .iter()
                .map(|(a, n)| (a.as_str(), n.get(), true))
                .chain(m.credits.iter().map(|(a, n)| (a.as_str(), n.get(), false)))
                .collect();
            // Leg by leg, debits first, as a client reads the refusal: the account's standing,
            // then (for a debit) its funds.
            let mut after = self.accounts.clone();
            for (id, n, debit) in &legs {
                let Some(a) = after.get_mut(*id).filter(|a| a.tenant_id == "ten_a") else {
                    return Some("account_not_found");
                };
                let kind = AccountKind::parse(&a.kind);
                if !kind.is_some_and(|k| movement.may_touch(k)) {
                    return Some("system_account");
                }
                if a.currency != m.currency.code() {
                    return Some("currency_mismatch");
                }
                if a.status == "closed" {
                    return Some("account_closed");
                }
                if a.restricted != 0 {
                    return Some("processing_restricted");
                }
                if *debit && a.status == "frozen" {
                    return Some("account_frozen");
                }
                if *debit {
                    if a.posted - a.pending_debits - n < -a.overdraft_limit {
                        return Some("insufficient_funds");
                    }
                    a.posted -= n;
                } else {
                    a.posted += n;
                }
            }
            // KYC: the sender's outgoing limits (from its running totals), then each credited
            // customer account's balance ceiling (from its balance before the movement).
            let amount = m.amount.get();
            let mut sender = None;
            if let Some(limits) = &m.kyc {
                if matches!(m.kind, TransferKind::Transfer | TransferKind::Withdrawal) {
                    let a = &self.accounts[m.debits[0].0.as_str()];
                    if let Some(c) = &a.customer_id {
                        let Some(f) = limits.tiers.get(&a.kyc_tier) else {
                            return Some("kyc_limit_exceeded");
                        };
                        let (day, month) = self.totals.get(c).copied().unwrap_or((0, 0));
                        if f.max_single_transfer.is_some_and(|x| amount > x)
                            || f.daily_outgoing.is_some_and(|x| day + amount > x)
                            || f.monthly_outgoing.is_some_and(|x| month + amount > x)
                        {
                            return Some("kyc_limit_exceeded");
                        }
                        sender = Some(c.clone());
                    }
                }
                if matches!(m.kind, TransferKind::Transfer | TransferKind::Deposit) {
                    let mut added: HashMap<&str, i64> = HashMap::new();
                    for (id, n) in &m.credits {
                        let a = &self.accounts[id.as_str()];
                        if a.customer_id.is_none() {
                            continue;
                        }
                        let Some(f) = limits.tiers.get(&a.kyc_tier) else {
                            return Some("kyc_limit_exceeded");
                        };
                        let so_far = added.entry(id.as_str()).or_insert(0);
                        if f.max_balance
                            .is_some_and(|x| a.posted + *so_far + n.get() > x)
                        {
                            return Some("kyc_limit_exceeded");
                        }
                        *so_far += n.get();
                    }
                }
            }
            if self.reviews && amount % 7 == 0 {
                // Nothing posts: the debit account reserves the amount, the credit shows it.
                let d = m.debits[0].0.as_str();
                if let Some(a) = self.accounts.get_mut(d) {
                    a.pending_debits += amount;
                }
                if let [(c, _)] = m.credits.as_slice()
                    && let Some(a) = self.accounts.get_mut(c.as_str())
                {
                    a.pending_credits += amount;
                }
                return Some("reviewed");
            }
            if let Some(c) = sender {
                let t = self.totals.entry(c.clone()).or_insert((0, 0));
                *t = (t.0 + amount, t.1 + amount);
                *self.added.entry(c).or_insert(0) += amount;
            }
            self.accounts = after;
            None
        }
    }

    #[test]
    fn the_engine_agrees_with_the_model_on_random_batches() {
        for seed in 1..=1_000u64 {
            let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut accounts = Vec::new();
            for i in 0..8 {
                let mut a = account(
                    &format!("acc_{i}"),
                    i64::try_from(g.below(800)).unwrap_or(0),
                );
                a.kind = (*g.pick(&[
                    "customer",
                    "customer",
                    "customer",
                    "customer",
                    "settlement",
                    "fees",
                ]))
                .into();
                if a.kind == "settlement" {
                    a.overdraft_limit = SETTLEMENT_OVERDRAFT_FOR_TESTS;
                } else if a.kind == "customer" {
                    a.customer_id = Some(format!("cus_{i}"));
                    a.kyc_tier = *g.pick(&[0, 0, 1, 2]);
                }
                a.status = (*g.pick(
                    &["active"; 8]
                        .map(|s| s)
                        .iter()
                        .chain(&["frozen", "closed"])
                        .copied()
                        .collect::<Vec<_>>(),
                ))
                .into();
                a.currency = (*g.pick(&["USD", "USD", "USD", "USD", "USD", "EUR"])).into();
                a.restricted = i64::from(g.below(16) == 0);
                a.tenant_id = (*g.pick(
                    &["ten_a"; 9]
                        .iter()
                        .chain(&["ten_b"])
                        .copied()
                        .collect::<Vec<_>>(),
                ))
                .into();
                accounts.push(a);
            }
            // KYC limits in half the runs: tier 0 limited, tier 1 unlimited, tier 2 not
            // permitted at all; some customers have already sent money today.
            let limited = g.below(2) == 0;
            let limits = std::sync::Arc::new(KycLimits {
                tiers: [
                    (
                        0,
                        crate::domain::kyc::TierLimits {
                            max_single_transfer: (g.below(2) == 0).then_some(250),
                            daily_outgoing: Some(200 + i64::try_from(g.below(400)).unwrap_or(0)),
                            monthly_outgoing: Some(700),
                            max_balance: Some(400 + i64::try_from(g.below(500)).unwrap_or(0)),
                        },
                    ),
                    (1, crate::domain::kyc::TierLimits::default()),
                ]
                .into_iter()
                .collect(),
            });
            let reviews = g.below(2) == 0;
            let checks = if reviews {
                Checks(vec![std::sync::Arc::new(Sevens)])
            } else {
                Checks::default()
            };
            let mut snap = snapshot(&accounts);
            // Step-up in half the runs: a fresh session, a stale one and an API token.
            let stepping_up = g.below(2) == 0;
            let actors = [
                (
                    "usr_fresh",
                    ActorCredential::Session("ses_f".into()),
                    Some(0),
                ),
                (
                    "usr_stale",
                    ActorCredential::Session("ses_s".into()),
                    Some(-1_000_000_000),
                ),
                ("usr_tok", ActorCredential::ApiToken("tok_t".into()), None),
            ]
            .map(|(user, credential, authenticated_at)| {
                snap.actors.insert(
                    (user.to_owned(), credential.clone()),
                    ActorStanding {
                        user_status: "active".into(),
                        roles: "MANAGER".into(),
                        credential_live: true,
                        tenant_active: true,
                        authenticated_at,
                    },
                );
                (user.to_owned(), credential)
            });
            let mut model = Model {
                accounts: accounts.iter().map(|a| (a.id.clone(), a.clone())).collect(),
                reviews,
                ..Model::default()
            };
            for a in &accounts {
                if let Some(c) = &a.customer_id
                    && g.below(2) == 0
                {
                    let (day, month) = (
                        i64::try_from(g.below(300)).unwrap_or(0),
                        i64::try_from(g.below(300)).unwrap_or(0),
                    );
                    let month = day + month;
                    for (p, v) in [(Period::Day, day), (Period::Month, month)] {
                        snap.counters
                            .insert(CounterKey::at("ten_a", c, OUTGOING, "USD", p, 0), v);
                    }
                    model.totals.insert(c.clone(), (day, month));
                }
            }
            let ids: Vec<String> = (0..9).map(|i| format!("acc_{i}")).collect(); // acc_8 is missing
            let of_kind = |kind: &str| -> Vec<String> {
                accounts
                    .iter()
                    .filter(|a| a.kind == kind)
                    .map(|a| a.id.clone())
                    .collect()
            };
            let (customers, settlements) = (of_kind("customer"), of_kind("settlement"));
            let mut batch = Vec::new();
            for t in 0..g.below(16) + 1 {
                let kind = *g.pick(&[
                    TransferKind::Transfer,
                    TransferKind::Transfer,
                    TransferKind::Deposit,
                    TransferKind::Withdrawal,
                ]);
                // Mostly the accounts the kind is for; one in ten anything at all.
                let wild = g.below(10) == 0 || customers.is_empty() || settlements.is_empty();
                let pool = |g: &mut Gen, want: &[String]| -> String {
                    if wild {
                        g.pick(&ids).clone()
                    } else {
                        g.pick(want).clone()
                    }
                };
                let from = pool(
                    &mut g,
                    if kind == TransferKind::Deposit {
                        &settlements
                    } else {
                        &customers
                    },
                );
                let n_credits = if g.below(4) == 0 { g.below(3) + 1 } else { 1 };
                let mut credits = Vec::new();
                for _ in 0..n_credits {
                    let to = pool(
                        &mut g,
                        if kind == TransferKind::Withdrawal {
                            &settlements
                        } else {
                            &customers
                        },
                    );
                    if to != from && !credits.iter().any(|(a, _): &(String, i64)| *a == to) {
                        credits.push((to, i64::try_from(g.below(300) + 1).unwrap_or(1)));
                    }
                }
                if credits.is_empty() {
                    continue;
                }
                let total: i64 = credits.iter().map(|(_, n)| n).sum();
                let mut m = movement(&from, &credits[0].0, total, i64::try_from(t).unwrap_or(0));
                m.credits = credits.iter().map(|(a, n)| (acc(a), amt(*n))).collect();
                m.kind = kind;
                if limited {
                    m.kyc = Some(limits.clone());
                }
                if stepping_up {
                    let (user, credential) = g.pick(&actors).clone();
                    m.actor = Some(crate::domain::authz::ActorCheck {
                        user_id: user,
                        credential,
                        roles: vec![crate::domain::authz::Role::Manager],
                        step_up: Some(crate::domain::authz::StepUpRule {
                            thresholds: [("USD".to_owned(), 150)].into_iter().collect(),
                            max_age_seconds: 600,
                        }),
                    });
                }
                if g.below(4) == 0 {
                    // Two credentials: a key is theirs alone.
                    m.idempotency = Some(NewIdempotency {
                        principal_id: (*g.pick(&["usr_x", "tok_y"])).into(),
                        key: format!("k{}", g.below(3)),
                        request_hash: "h".into(),
                        expires_at: Timestamp::from_micros(1_000),
                    });
                }
                batch.push(m);
            }
            let before_sum: i64 = accounts.iter().map(|a| a.posted).sum();
            let p = plan(snap, &batch, &checks);
            assert_eq!(p.results.len(), batch.len());
            for (m, r) in batch.iter().zip(&p.results) {
                let expected = model.apply(m);
                let got = match r {
                    PostResult::Posted(_) => None,
                    PostResult::Refused(r) => Some(r.code()),
                    PostResult::DuplicateKey(_) => Some("duplicate"),
                    PostResult::Reviewed(_) => Some("reviewed"),
                    PostResult::HoldPlaced(_) | PostResult::HoldVoided(_) => Some("hold"),
                };
                assert_eq!(got, expected, "seed {seed}: {m:?}");
            }
            // Every balance and reservation the engine would write is the model's, and no
            // account ends below its floor.
            let mut after: HashMap<String, (i64, i64, i64)> = accounts
                .iter()
                .map(|a| {
                    (
                        a.id.clone(),
                        (a.posted, a.pending_debits, a.pending_credits),
                    )
                })
                .collect();
            for (a, _) in &p.accounts {
                after.insert(
                    a.id.clone(),
                    (a.posted, a.pending_debits, a.pending_credits),
                );
                assert!(
                    a.posted - a.pending_debits >= -a.overdraft_limit,
                    "seed {seed}: {a:?} below its floor"
                );
            }
            for (id, a) in &model.accounts {
                assert_eq!(
                    after.get(id),
                    Some(&(a.posted, a.pending_debits, a.pending_credits)),
                    "seed {seed}: balance of {id}"
                );
            }
            // KYC's running totals: the engine adds exactly what the model counted, to the
            // day and the month of the sender.
            let mut counted: HashMap<(String, Period), i64> = HashMap::new();
            for (k, d) in &p.counters {
                assert_eq!(k.metric, OUTGOING, "seed {seed}");
                *counted.entry((k.subject.clone(), k.period)).or_insert(0) += d;
            }
            for (c, n) in &model.added {
                for period in [Period::Day, Period::Month] {
                    assert_eq!(
                        counted.remove(&(c.clone(), period)),
                        Some(*n),
                        "seed {seed}: {c}"
                    );
                }
            }
            assert!(counted.is_empty(), "seed {seed}: {counted:?}");
            // Double entry: money moves, it is never made or lost, and every posted
            // transfer's legs balance.
            assert_eq!(
                after.values().map(|(p, _, _)| p).sum::<i64>(),
                before_sum,
                "seed {seed}"
            );
            for t in p.posted() {
                let (mut dr, mut cr) = (0, 0);
                for e in &t.entries {
                    if e.direction == "debit" {
                        dr += e.amount
                    } else {
                        cr += e.amount
                    }
                }
                assert_eq!(
                    (dr, cr),
                    (t.transfer.amount, t.transfer.amount),
                    "seed {seed}"
                );
            }
            // Side writes commit only with what posts or is held: one event per posted or
            // reviewed movement when the check runs, none for a refusal.
            let moved = p
                .results
                .iter()
                .filter(|r| matches!(r, PostResult::Posted(_) | PostResult::Reviewed(_)))
                .count();
            assert_eq!(
                p.events.len(),
                if reviews { moved } else { 0 },
                "seed {seed}"
            );
            let reviewed = p
                .results
                .iter()
                .filter(|r| matches!(r, PostResult::Reviewed(_)))
                .count();
            assert_eq!(p.new_holds.len(), reviewed, "seed {seed}");
            // Bounded audit growth: at most one record per movement, none for a replay.
            let replays = p
                .results
                .iter()
                .filter(|r| matches!(r, PostResult::DuplicateKey(_)))
                .count();
            assert_eq!(p.audit.len(), batch.len() - replays, "seed {seed}");
            // Each key is recorded once per credential, with the outcome of its first use.
            let mut keys: Vec<(&str, &str)> = p
                .keys
                .iter()
                .map(|k| (k.principal_id.as_str(), k.key.as_str()))
                .collect();
            keys.sort_unstable();
            let n = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), n, "seed {seed}");
        }
    }

    const SETTLEMENT_OVERDRAFT_FOR_TESTS: i64 = 1_000_000;
}
