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

use super::{
    AccountKind, EntryRecord, IdempotencyRecord, Movement, PostResult, PostedTransfer, Refusal,
    StoredOutcome, TransferCommand, TransferRecord,
};
use crate::domain::audit::{NewAuditEvent, Outcome};
use crate::domain::authz::{ActorCredential, ActorStanding, still_authorised};

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
    fn apply(&mut self, m: &TransferCommand) -> Result<PostedTransfer, Refusal> {
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

        // Every check passed: commit the movement to the snapshot.
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
        Ok(PostedTransfer {
            transfer,
            entries,
            details: m.details_clear.clone(),
        })
    }
}

/// Applies `batch` in order to `snap`. A movement whose idempotency key is already live (or was
/// used earlier in the batch) is a `DuplicateKey` and changes nothing; every other movement is
/// posted or refused, and either way its key is recorded with the rendered answer and an audit
/// event with its outcome is appended.
pub fn plan(snap: Snapshot, batch: &[TransferCommand]) -> Plan {
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
    };
    let mut out = Plan::default();
    for m in batch {
        // The actor first: a movement whose actor lost the right to it since its request was
        // authorised writes nothing (no key either: the answer is about the credential, not
        // the request), and its refusal is an authorisation refusal.
        if let Some(a) = &m.actor {
            let standing = engine
                .snap
                .actors
                .get(&(a.user_id.clone(), a.credential.clone()));
            if let Err(r) = still_authorised(&a.roles, standing) {
                if !m.quiet_refusal {
                    out.audit.push(NewAuditEvent {
                        outcome: Outcome::Denied,
                        reason: Some(r.code().to_owned()),
                        security_event: Some(
                            crate::domain::security::SecurityEvent::AuthorizationRefused,
                        ),
                        ..m.audit.clone()
                    });
                }
                out.results
                    .push(PostResult::Refused(Refusal::ActorRevoked(r)));
                continue;
            }
        }
        let slot = m.idempotency.as_ref().map(|k| {
            (
                m.tenant_id.to_string(),
                k.principal_id.clone(),
                k.key.clone(),
            )
        });
        if let Some(stored) = slot.as_ref().and_then(|k| engine.snap.keys.get(k)) {
            out.results.push(PostResult::DuplicateKey(stored.clone()));
            continue;
        }
        let outcome = engine.apply(m);
        match &outcome {
            Ok(_) => out.audit.push(m.audit.clone()),
            Err(_) if m.quiet_refusal => {}
            Err(refusal) => out.audit.push(NewAuditEvent {
                outcome: Outcome::Failure,
                reason: Some(refusal.code().to_owned()),
                ..m.audit.clone()
            }),
        }
        if let (Some(idem), Some(slot)) = (&m.idempotency, slot) {
            // The outcome's facts, not a rendered answer: the HTTP layer renders a replay.
            let body = match &outcome {
                Ok(p) => StoredOutcome::Transfer(p.transfer.id.clone()),
                Err(r) => StoredOutcome::Refused(r.clone()),
            }
            .encode();
            engine.snap.keys.insert(
                slot,
                IdempotencyRecord {
                    request_hash: idem.request_hash.clone(),
                    response_status: OUTCOME_STATUS,
                    response_body: body.clone(),
                },
            );
            out.keys.push(KeyRow {
                tenant_id: m.tenant_id.to_string(),
                principal_id: idem.principal_id.clone(),
                key: idem.key.clone(),
                request_hash: idem.request_hash.clone(),
                body,
                created_at: m.created_at.as_micros(),
                expires_at: idem.expires_at.as_micros(),
            });
        }
        match outcome {
            Ok(p) => {
                out.results.push(PostResult::Posted(p));
            }
            Err(r) => out.results.push(PostResult::Refused(r)),
        }
    }
    let Engine {
        snap,
        changed_accounts,
        changed_holds,
        changed_reversed,
        ..
    } = engine;
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

pub fn wanted(batch: &[TransferCommand]) -> Wanted {
    let mut accounts = Vec::new();
    let mut holds = Vec::new();
    let mut reversals = Vec::new();
    let mut references = Vec::new();
    let mut keys = Vec::new();
    let mut actors = Vec::new();
    let mut latest = i64::MIN;
    for m in batch {
        actors.extend(
            m.actor
                .iter()
                .map(|a| (a.user_id.clone(), a.credential.clone())),
        );
        accounts.extend(m.debits.iter().map(|(a, _)| a.to_string()));
        accounts.extend(m.credits.iter().map(|(a, _)| a.to_string()));
        holds.extend(m.capture_hold.iter().map(ToString::to_string));
        reversals.extend(m.reverses.iter().map(|r| r.original.to_string()));
        let tenant = m.tenant_id.to_string();
        references.extend(m.reference.iter().map(|r| (tenant.clone(), r.clone())));
        keys.extend(
            m.idempotency
                .iter()
                .map(|k| (tenant.clone(), k.principal_id.clone(), k.key.clone())),
        );
        latest = latest.max(m.created_at.as_micros());
    }
    for v in [&mut accounts, &mut holds, &mut reversals] {
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
        }
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
        let p = plan(snap, &batch);
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
        let p = plan(snap, &[m]);
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
        let p = plan(snap, &batch);
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
        let p = plan(snap, &[m1, m2]);
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
            let p = plan(snap(), &[m]);
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
            },
        );
        // Before the expiry the hold counts; at it, it no longer does.
        let p = plan(
            snap,
            &[
                movement("acc_a", "acc_b", 100, 4),
                movement("acc_a", "acc_b", 100, 5),
            ],
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
        let p = plan(snap, &[r]);
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
        let p = plan(snap(), &[movement("acc_s", "acc_c", 10, 1)]);
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::SystemAccount(_))
        ));
        // A deposit is the declared way in.
        let mut d = movement("acc_s", "acc_c", 10, 1);
        d.kind = TransferKind::Deposit;
        assert!(matches!(
            plan(snap(), &[d]).results[0],
            PostResult::Posted(_)
        ));
        // A capture or a reversal of a transfer may not touch it either.
        let mut c = movement("acc_s", "acc_c", 10, 1);
        c.kind = TransferKind::Capture;
        assert!(matches!(
            plan(snap(), &[c]).results[0],
            PostResult::Refused(Refusal::SystemAccount(_))
        ));
        let mut fees = account("acc_f", 100);
        fees.kind = "fees".into();
        let p = plan(
            snapshot(&[fees, account("acc_c", 10)]),
            &[movement("acc_c", "acc_f", 1, 1)],
        );
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::SystemAccount(_))
        ));
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

    /// The model: the ledger's rules written as plainly as possible, one movement at a time,
    /// over balances only. The engine must agree with it on every outcome and every balance.
    fn model_apply(
        accounts: &mut HashMap<String, AccountState>,
        keys: &mut HashSet<String>,
        m: &TransferCommand,
    ) -> Option<&'static str> {
        if let Some(k) = &m.idempotency
            && !keys.insert(k.key.clone())
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
        let mut after = accounts.clone();
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
        *accounts = after;
        None
    }

    #[test]
    fn the_engine_agrees_with_the_model_on_random_batches() {
        for seed in 1..=300u64 {
            let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut accounts = Vec::new();
            for i in 0..6 {
                let mut a = account(
                    &format!("acc_{i}"),
                    i64::try_from(g.below(500)).unwrap_or(0),
                );
                a.kind =
                    (*g.pick(&["customer", "customer", "customer", "settlement", "fees"])).into();
                if a.kind == "settlement" {
                    a.overdraft_limit = SETTLEMENT_OVERDRAFT_FOR_TESTS;
                }
                a.status =
                    (*g.pick(&["active", "active", "active", "active", "frozen", "closed"])).into();
                a.currency = (*g.pick(&["USD", "USD", "USD", "EUR"])).into();
                a.restricted = i64::from(g.below(10) == 0);
                a.tenant_id =
                    (*g.pick(&["ten_a", "ten_a", "ten_a", "ten_a", "ten_a", "ten_b"])).into();
                accounts.push(a);
            }
            let ids: Vec<String> = (0..7).map(|i| format!("acc_{i}")).collect(); // acc_6 is missing
            let mut batch = Vec::new();
            for t in 0..g.below(12) + 1 {
                let from = g.pick(&ids).clone();
                let n_credits = g.below(3) + 1;
                let mut credits = Vec::new();
                for _ in 0..n_credits {
                    let to = g.pick(&ids).clone();
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
                m.kind = *g.pick(&[
                    TransferKind::Transfer,
                    TransferKind::Transfer,
                    TransferKind::Deposit,
                    TransferKind::Withdrawal,
                ]);
                if g.below(4) == 0 {
                    m.idempotency = Some(NewIdempotency {
                        principal_id: "usr_x".into(),
                        key: format!("k{}", g.below(3)),
                        request_hash: "h".into(),
                        expires_at: Timestamp::from_micros(1_000),
                    });
                }
                batch.push(m);
            }
            let before_sum: i64 = accounts.iter().map(|a| a.posted).sum();
            let mut model: HashMap<String, AccountState> =
                accounts.iter().map(|a| (a.id.clone(), a.clone())).collect();
            let mut model_keys = HashSet::new();
            let p = plan(snapshot(&accounts), &batch);
            assert_eq!(p.results.len(), batch.len());
            for (m, r) in batch.iter().zip(&p.results) {
                let expected = model_apply(&mut model, &mut model_keys, m);
                let got = match r {
                    PostResult::Posted(_) => None,
                    PostResult::Refused(r) => Some(r.code()),
                    PostResult::DuplicateKey(_) => Some("duplicate"),
                };
                assert_eq!(got, expected, "seed {seed}: {m:?}");
            }
            // Every balance the engine would write is the model's.
            let mut after: HashMap<String, i64> =
                accounts.iter().map(|a| (a.id.clone(), a.posted)).collect();
            for (a, _) in &p.accounts {
                after.insert(a.id.clone(), a.posted);
                assert!(
                    a.posted - a.pending_debits >= -a.overdraft_limit,
                    "seed {seed}: {a:?} below its floor"
                );
            }
            for (id, a) in &model {
                assert_eq!(
                    after.get(id),
                    Some(&a.posted),
                    "seed {seed}: balance of {id}"
                );
            }
            // Double entry: money moves, it is never made or lost, and every posted
            // transfer's legs balance.
            assert_eq!(after.values().sum::<i64>(), before_sum, "seed {seed}");
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
            // Bounded audit growth: at most one record per movement, none for a replay.
            let replays = p
                .results
                .iter()
                .filter(|r| matches!(r, PostResult::DuplicateKey(_)))
                .count();
            assert_eq!(p.audit.len(), batch.len() - replays, "seed {seed}");
            // Each key is recorded once, with the outcome of its first use.
            let mut keys: Vec<&str> = p.keys.iter().map(|k| k.key.as_str()).collect();
            keys.sort_unstable();
            let n = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), n, "seed {seed}");
        }
    }

    const SETTLEMENT_OVERDRAFT_FOR_TESTS: i64 = 1_000_000;
}
