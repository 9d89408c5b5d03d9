//! The posting engine: applies a batch of movements, in order, to a snapshot of every row they
//! touch, and returns what to write. It does no I/O. The SQL backends load the snapshot inside a
//! write transaction that already holds the locks (SQLite's write lock taken by
//! `BEGIN IMMEDIATE`; PostgreSQL row locks taken by `SELECT … FOR UPDATE` in id order), so
//! reading, checking and writing here is one atomic step: nothing can change the rows between
//! the load and the commit. The storage CHECK on the account floor stays as a last guard.
//!
//! Why a snapshot: the writer used to run about ten statements per movement. With the rows in
//! memory, a batch of hundreds of movements costs a constant dozen statements (multi-row
//! inserts and one multi-row update of the touched accounts).

use std::collections::{HashMap, HashSet};

use crate::domain::audit::{NewAuditEvent, Outcome};
use crate::domain::authz::{ActorStanding, still_authorised};
use crate::domain::ledger::{AccountKind, Movement, Refusal};
use crate::store::{
    ActorCredential, EntryRecord, IdempotencyRecord, NewMovement, PostResult, PostedTransfer,
    TransferRecord,
};

/// An account as loaded for posting.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    pub status: u16,
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
    fn apply(&mut self, m: &NewMovement) -> Result<PostedTransfer, Refusal> {
        let now = m.created_at.as_micros();
        let tenant = m.tenant_id.as_str();
        let movement = Movement::of(m.kind, m.reverses.as_ref().map(|r| r.original_kind));
        self.expire_until(now);

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
                    .get(&(rev.original.clone(), account.clone()))
                    .copied()
                    .unwrap_or(0);
                if done + amount > ceiling {
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
                .get(hold_id)
                .filter(|h| h.tenant_id == tenant && h.status == "active" && h.expires_at > now)
                .cloned()
                .ok_or(Refusal::HoldNotActive)?;
            if m.amount > hold.amount {
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
        for (id, amount) in &m.debits {
            let current = work.get(id).or_else(|| self.snap.accounts.get(id));
            if let Some(r) = refuse_account(
                current,
                id,
                tenant,
                &m.currency,
                m.debit_owner.as_deref(),
                true,
                movement,
            ) {
                return Err(r);
            }
            let mut a = current
                .cloned()
                .ok_or_else(|| Refusal::AccountNotFound(id.clone()))?;
            if !a.can_debit(*amount) {
                return Err(Refusal::InsufficientFunds(id.clone()));
            }
            a.posted -= amount;
            a.entry_count += 1;
            legs.push((id.clone(), "debit", *amount, a.posted, a.entry_count));
            work.insert(id.clone(), a);
        }
        for (id, amount) in &m.credits {
            let current = work.get(id).or_else(|| self.snap.accounts.get(id));
            if let Some(r) = refuse_account(current, id, tenant, &m.currency, None, false, movement)
            {
                return Err(r);
            }
            let mut a = current
                .cloned()
                .ok_or_else(|| Refusal::AccountNotFound(id.clone()))?;
            a.posted = a
                .posted
                .checked_add(*amount)
                .ok_or_else(|| Refusal::InsufficientFunds(id.clone()))?;
            a.entry_count += 1;
            legs.push((id.clone(), "credit", *amount, a.posted, a.entry_count));
            work.insert(id.clone(), a);
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
            currency: m.currency.clone(),
            amount: m.amount,
            debit_account_id: m.debits.first().map(|(a, _)| a.clone()).unwrap_or_default(),
            reference: m.reference.clone(),
            details: m.details.clone(),
            reverses_id: m.reverses.as_ref().map(|r| r.original.clone()),
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
                let k = (rev.original.clone(), account.clone());
                *self.snap.reversed.entry(k.clone()).or_insert(0) += amount;
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
pub fn plan(snap: Snapshot, batch: &[NewMovement]) -> Plan {
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
            let (status, body) = (m.render)(&outcome);
            let body = idem.stored_body(m.tenant_id.as_str(), body);
            engine.snap.keys.insert(
                slot,
                IdempotencyRecord {
                    request_hash: idem.request_hash.clone(),
                    response_status: i64::from(status),
                    response_body: body.clone(),
                },
            );
            out.keys.push(KeyRow {
                tenant_id: m.tenant_id.to_string(),
                principal_id: idem.principal_id.clone(),
                key: idem.key.clone(),
                request_hash: idem.request_hash.clone(),
                status,
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

/// Splits `rows` into runs of at most `max_rows` rows whose estimated encoded size stays under
/// `max_bytes` (a single larger row still gets a run of its own).
///
/// Why: sqlx does not set `TCP_NODELAY` on PostgreSQL sockets, and a message larger than the
/// socket's send buffer (16 KiB by default on Linux) is written in two parts; Nagle's algorithm
/// then holds the tail until the server acknowledges the head, which it delays by 40 ms. Keeping
/// every multi-row statement under the buffer avoids that stall entirely.
pub fn chunks_by_size<T>(
    rows: &[T],
    max_rows: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        let n = size(r);
        if i > start && (i - start >= max_rows || bytes + n > max_bytes) {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// Logs where a batch's time went (`RUST_LOG=kasho::store=debug`): `marks` are the elapsed times
/// when the transaction had begun, the rows were loaded, the plan was made, the rows were written
/// and the audit records appended; `total` is the elapsed time after the commit.
pub fn log_phases(size: usize, marks: [std::time::Duration; 5], total: std::time::Duration) {
    let [began, loaded, planned, written, audited] = marks;
    tracing::debug!(
        size,
        begin_us = began.as_micros(),
        load_us = (loaded - began).as_micros(),
        plan_us = (planned - loaded).as_micros(),
        write_us = (written - planned).as_micros(),
        audit_us = (audited - written).as_micros(),
        commit_us = (total - audited).as_micros(),
        "ledger batch phases"
    );
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

pub fn wanted(batch: &[NewMovement]) -> Wanted {
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
        accounts.extend(m.debits.iter().map(|(a, _)| a.clone()));
        accounts.extend(m.credits.iter().map(|(a, _)| a.clone()));
        holds.extend(m.capture_hold.iter().cloned());
        reversals.extend(m.reverses.iter().map(|r| r.original.clone()));
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
    use crate::ids::{TenantId, TransferId};
    use crate::store::{NewIdempotency, Reverses};

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

    fn render(r: &Result<PostedTransfer, Refusal>) -> (u16, String) {
        match r {
            Ok(_) => (201, "ok".into()),
            Err(e) => (422, e.code().into()),
        }
    }

    fn movement(from: &str, to: &str, amount: i64, at: i64) -> NewMovement {
        let tenant = TenantId::from_trusted("ten_a".into());
        NewMovement {
            id: TransferId::generate(),
            tenant_id: tenant.clone(),
            kind: TransferKind::Transfer,
            currency: "USD".into(),
            amount,
            debits: vec![(from.into(), amount)],
            debit_owner: None,
            credits: vec![(to.into(), amount)],
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
            render,
            reverses: None,
            capture_hold: None,
            quiet_refusal: false,
            actor: None,
        }
    }

    fn snapshot(accounts: &[AccountState]) -> Snapshot {
        Snapshot {
            accounts: accounts.iter().map(|a| (a.id.clone(), a.clone())).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn size_chunks_respect_both_bounds() {
        let rows = [5usize, 5, 5, 20, 1, 1, 1];
        let sizes: Vec<Vec<usize>> = chunks_by_size(&rows, 3, 12, |n| *n)
            .into_iter()
            .map(<[usize]>::to_vec)
            .collect();
        assert_eq!(sizes, vec![vec![5, 5], vec![5], vec![20], vec![1, 1, 1]]);
        assert!(chunks_by_size(&[] as &[usize], 3, 12, |n| *n).is_empty());
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
        m.credits = vec![("acc_b".into(), 25), ("acc_c".into(), 25)];
        let p = plan(snap, &[m]);
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::AccountClosed(_))
        ));
        assert!(p.accounts.is_empty() && p.entries().is_empty() && p.transfers().is_empty());
    }

    #[test]
    fn a_revoked_actors_movements_are_refused_and_the_rest_of_the_batch_posts() {
        use crate::domain::authz::{ActorRevoked, Role};
        use crate::store::ActorCheck;
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
                seal: None,
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
            seal: None,
        };
        let mut m1 = movement("acc_a", "acc_b", 10, 1);
        m1.idempotency = Some(key.clone());
        let mut m2 = movement("acc_a", "acc_b", 10, 2);
        m2.idempotency = Some(key);
        let p = plan(snap, &[m1, m2]);
        let PostResult::DuplicateKey(stored) = &p.results[1] else {
            unreachable!("expected a duplicate, got {:?}", p.results[1])
        };
        assert_eq!(stored.response_body, "ok");
        assert_eq!(p.transfers().len(), 1);
        assert_eq!(p.keys.len(), 1);
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
        r.debits = vec![("acc_b".into(), 40), ("acc_c".into(), 40)];
        r.reverses = Some(Reverses {
            original: "trf_o".into(),
            original_kind: TransferKind::Transfer,
            ceilings: vec![("acc_b".into(), 50), ("acc_c".into(), 30)],
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
            snapshot(&[fees, account("acc_c", 0)]),
            &[movement("acc_c", "acc_f", 0, 1)],
        );
        assert!(matches!(
            p.results[0],
            PostResult::Refused(Refusal::SystemAccount(_))
        ));
    }
}
