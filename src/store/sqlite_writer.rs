//! The embedded backend's ledger writer: one OS thread that owns its own SQLite connection and
//! runs each batch of movements from `BEGIN IMMEDIATE` to `COMMIT` synchronously.
//!
//! Why a thread of its own: sqlx runs every SQLite statement on a worker thread and hands each
//! statement and its rows across a channel, so a batch of a few dozen statements costs a few
//! dozen thread hand-offs, each waiting for a core on a busy machine. Here the whole batch runs
//! on one thread with cached prepared statements, one row at a time (a row costs microseconds
//! when no thread boundary is crossed). The rules are the same code as everywhere else:
//! [`engine::plan`] over a snapshot read under the database write lock, and audit records
//! sealed by the same [`next_record`](super::audit::next_record).

use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::posting;
use super::{ActorCredential, IdempotencyRecord, PostResult, StoreError, StoreResult};
use crate::domain::audit::{AuditSealer, GENESIS_HASH, NewAuditEvent};
use crate::domain::authz::ActorStanding;
use crate::domain::ledger::LedgerCommand;
use crate::domain::ledger::engine::{self, AccountState, HoldState, Snapshot, SubjectState};
use crate::domain::ledger::{Checks, extension::OUTGOING};

type Reply = oneshot::Sender<StoreResult<(bool, Vec<PostResult>)>>;

struct Job {
    batch: Vec<LedgerCommand>,
    atomic: bool,
    checks: Checks,
    reply: Reply,
}

/// A handle to the writer thread; dropping the last handle stops the thread.
pub(super) struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
    /// Keeps the checkpoint thread running.
    _alive: std::sync::Arc<()>,
}

impl SqliteWriter {
    /// Starts the thread. The connection is opened on the first batch, after migrations.
    pub(super) fn start(
        path: std::path::PathBuf,
        sealer: AuditSealer,
        alerts: std::sync::Arc<super::alerts::AlertHook>,
        page_limit: std::sync::Arc<super::sqlite::PageLimit>,
    ) -> StoreResult<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let alive = std::sync::Arc::new(());
        let background_checkpoints =
            start_checkpointer(path.clone(), std::sync::Arc::downgrade(&alive));
        std::thread::Builder::new()
            .name("kasho-ledger-writer".into())
            .spawn(move || {
                let mut conn: Option<Connection> = None;
                let mut wal = path.clone().into_os_string();
                wal.push("-wal");
                let wal = std::path::PathBuf::from(wal);
                // The page cap this connection last applied (see `SqliteStore::limit_pages`).
                let mut applied_limit = 0;
                while let Ok(job) = rx.recv() {
                    let ready = match conn.take() {
                        Some(c) => Ok(c),
                        None => {
                            applied_limit = 0;
                            open(&path, background_checkpoints)
                        }
                    };
                    let result = match ready {
                        Ok(c) => {
                            let c = conn.insert(c);
                            let pages = page_limit.pages();
                            if pages != applied_limit
                                && c.query_row(
                                    &format!("PRAGMA max_page_count = {pages}"),
                                    [],
                                    |_| Ok(()),
                                )
                                .is_ok()
                            {
                                applied_limit = pages;
                            }
                            post(c, &sealer, &alerts, &job.batch, job.atomic, &job.checks)
                        }
                        Err(e) => Err(e),
                    };
                    // After a failed batch the connection must be outside any transaction
                    // before it posts again; one that cannot be brought back there, or that
                    // failed on storage itself (a full disk, an I/O error), is closed and the next
                    // batch opens a fresh one, so the writer recovers as soon as storage does.
                    if let (Err(e), Some(c)) = (&result, conn.as_mut())
                        && !recoverable(c, e)
                    {
                        conn = None;
                    }
                    let _ = job.reply.send(result);
                    if let Some(c) = conn.as_ref() {
                        restart_long_wal(c, &wal);
                    }
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start the ledger writer: {e}")))?;
        Ok(Self {
            jobs,
            _alive: alive,
        })
    }
}

#[async_trait::async_trait]
impl super::LedgerPort for SqliteWriter {
    /// Posts `batch` in one transaction on the writer thread.
    async fn post(
        &self,
        batch: &[LedgerCommand],
        atomic: bool,
        checks: &Checks,
    ) -> StoreResult<(bool, Vec<PostResult>)> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                batch: batch.to_vec(),
                atomic,
                checks: checks.clone(),
                reply,
            })
            .map_err(|_| StoreError::Database("the ledger writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Database("the ledger writer thread has stopped".into()))?
    }
}

/// Copies the WAL back into the database file in the background, so the writer's commits never
/// pay for it (the writer's connection turns automatic checkpoints off only once this thread
/// runs). A passive checkpoint never blocks writers or readers. The thread stops when the writer
/// handle is dropped. Returns whether it started.
fn start_checkpointer(path: std::path::PathBuf, alive: std::sync::Weak<()>) -> bool {
    std::thread::Builder::new()
        .name("kasho-checkpoint".into())
        .spawn(move || {
            let Ok(c) = Connection::open(&path) else {
                return;
            };
            while alive.upgrade().is_some() {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    // Five times a second while the disk is full: limited.
                    crate::warn_limited!(e, "WAL checkpoint failed");
                }
            }
        })
        .is_ok()
}

/// Past this size the writer restarts the WAL after its commit.
const WAL_RESTART_BYTES: u64 = 64 * 1024 * 1024;

/// Under continuous writes a passive checkpoint never reaches the end of the WAL, so SQLite never
/// starts it over and it would grow without bound. Once it passes [`WAL_RESTART_BYTES`], the
/// writer (between batches, holding no transaction) runs a RESTART checkpoint: it copies what
/// the background checkpoints have not yet copied, waits for readers of older snapshots (within
/// the busy timeout), and lets the next commit write from the start of the file again.
fn restart_long_wal(c: &Connection, wal: &std::path::Path) {
    if std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_RESTART_BYTES)
        && let Err(e) = c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
    {
        crate::warn_limited!(e, "WAL restart checkpoint failed");
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE {
            return StoreError::Conflict {
                constraint: msg.clone().unwrap_or_default(),
            };
        }
        if super::sqlite_code_unavailable(f.extended_code) {
            return StoreError::Unavailable(e.to_string());
        }
    }
    StoreError::Database(e.to_string())
}

/// Whether the writer's connection may post the next batch after `error`: it is outside any
/// transaction (rolled back now if the failed batch's own rollback did not happen) and the error
/// was not storage failing under it.
fn recoverable(c: &mut Connection, error: &StoreError) -> bool {
    if !c.is_autocommit() {
        let _ = c.execute_batch("ROLLBACK");
    }
    c.is_autocommit() && !matches!(error, StoreError::Unavailable(_))
}

fn open(path: &std::path::Path, background_checkpoints: bool) -> StoreResult<Connection> {
    let c = Connection::open(path).map_err(db)?;
    // The same durability as the pool's connections (a commit returns once it is on disk), and
    // the same `secure_delete` (content it frees is zeroed).
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -32768; PRAGMA secure_delete = ON;",
    )
    .map_err(db)?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    c.set_prepared_statement_cache_capacity(64);
    if background_checkpoints {
        c.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(db)?;
    }
    Ok(c)
}

/// One batch: load under the write lock, plan, write, audit, commit. Any error rolls the whole
/// transaction back (the caller then retries movement by movement).
fn post(
    c: &mut Connection,
    sealer: &AuditSealer,
    alerts: &super::alerts::AlertHook,
    batch: &[LedgerCommand],
    atomic: bool,
    checks: &Checks,
) -> StoreResult<(bool, Vec<PostResult>)> {
    let started = std::time::Instant::now();
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let began = started.elapsed();
    let want = engine::wanted(batch);
    let mut snap = Snapshot::default();
    let mut expired_keys = Vec::new();
    {
        let hold_row = |r: &rusqlite::Row<'_>| {
            Ok(HoldState {
                id: r.get(0)?,
                tenant_id: r.get(1)?,
                account_id: r.get(2)?,
                credit_account_id: r.get(3)?,
                amount: r.get(4)?,
                status: r.get(5)?,
                expires_at: r.get(6)?,
                purpose: r.get(7)?,
            })
        };
        // Active holds on or towards the batch's own accounts that expire by its latest time
        // (never every tenant's: expiry work is bounded by what the batch touches).
        // One index probe first: when no hold at all has expired (the common case), the
        // per-account look-ups are skipped.
        let mut holds: Vec<HoldState> = Vec::new();
        let any_expired = tx
            .prepare_cached(
                "SELECT 1 FROM holds WHERE status = 'active' AND expires_at <= ?1 LIMIT 1",
            )
            .map_err(db)?
            .query_row(params![want.latest], |_| Ok(()))
            .optional()
            .map_err(db)?
            .is_some();
        let accounts_with_expiry: &[String] = if any_expired { &want.accounts } else { &[] };
        let mut expiring = tx
            .prepare_cached(
                "SELECT id, tenant_id, account_id, credit_account_id, amount, status, expires_at, purpose \
                 FROM holds WHERE status = 'active' AND expires_at <= ?1 AND account_id = ?2 \
                 UNION SELECT id, tenant_id, account_id, credit_account_id, amount, status, expires_at, purpose \
                 FROM holds WHERE status = 'active' AND expires_at <= ?1 AND credit_account_id = ?2",
            )
            .map_err(db)?;
        for account in accounts_with_expiry {
            let rows: Vec<HoldState> = expiring
                .query_map(params![want.latest, account], hold_row)
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            holds.extend(rows);
        }
        drop(expiring);
        holds.sort_by(|a, b| a.id.cmp(&b.id));
        holds.dedup_by(|a, b| a.id == b.id);
        let mut by_id = tx
            .prepare_cached(
                "SELECT id, tenant_id, account_id, credit_account_id, amount, status, expires_at, purpose \
                 FROM holds WHERE id = ?1",
            )
            .map_err(db)?;
        for id in &want.holds {
            if let Some(h) = by_id
                .query_row(params![id], hold_row)
                .optional()
                .map_err(db)?
            {
                holds.push(h);
            }
        }
        let account_ids = engine::accounts_to_load(&want, &holds);
        snap.holds = holds.into_iter().map(|h| (h.id.clone(), h)).collect();

        let mut account = tx
            .prepare_cached(
                "SELECT a.id, a.tenant_id, a.customer_id, a.kind, a.currency, a.status, a.posted, \
                 a.pending_debits, a.pending_credits, a.overdraft_limit, a.entry_count, \
                 COALESCE(c.processing_restricted, 0), COALESCE(c.kyc_tier, 0) \
                 FROM accounts a LEFT JOIN customers c ON c.id = a.customer_id WHERE a.id = ?1",
            )
            .map_err(db)?;
        for id in &account_ids {
            let a = account
                .query_row(params![id], |r| {
                    Ok(AccountState {
                        id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        customer_id: r.get(2)?,
                        kind: r.get(3)?,
                        currency: r.get(4)?,
                        status: r.get(5)?,
                        posted: r.get(6)?,
                        pending_debits: r.get(7)?,
                        pending_credits: r.get(8)?,
                        overdraft_limit: r.get(9)?,
                        entry_count: r.get(10)?,
                        restricted: r.get(11)?,
                        kyc_tier: r.get(12)?,
                    })
                })
                .optional()
                .map_err(db)?;
            if let Some(a) = a {
                snap.accounts.insert(a.id.clone(), a);
            }
        }
        let mut subject = tx
            .prepare_cached("SELECT id, tenant_id, kyc_tier, status FROM customers WHERE id = ?1")
            .map_err(db)?;
        for id in &want.subjects {
            let s = subject
                .query_row(params![id], |r| {
                    Ok(SubjectState {
                        id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        kyc_tier: r.get(2)?,
                        active: r.get::<_, String>(3)? == "active",
                    })
                })
                .optional()
                .map_err(db)?;
            if let Some(s) = s {
                snap.subjects.insert(s.id.clone(), s);
            }
        }
        drop(subject);
        // Running totals, after the accounts and subjects that say whose they are. A missing
        // window of KYC's outgoing metric is seeded from the ledger (under this lock, so
        // exactly) and inserted; any other metric starts at zero.
        let keys = engine::counters_to_load(batch, &snap.accounts, &snap.subjects, checks);
        if !keys.is_empty() {
            let mut get = tx
                .prepare_cached(
                    "SELECT total FROM ledger_counters WHERE tenant_id = ?1 AND subject = ?2 \
                     AND metric = ?3 AND currency = ?4 AND period = ?5 AND window_start = ?6",
                )
                .map_err(db)?;
            let mut seed = tx.prepare_cached(posting::SEED_OUTGOING).map_err(db)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO ledger_counters (tenant_id, subject, metric, currency, period, \
                     window_start, total, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db)?;
            for k in keys {
                let args = params![
                    k.tenant_id,
                    k.subject,
                    k.metric,
                    k.currency,
                    k.period.as_str(),
                    k.window_start
                ];
                let total = match get.query_row(args, |r| r.get(0)).optional().map_err(db)? {
                    Some(t) => t,
                    None => {
                        let t: i64 = if k.metric == OUTGOING {
                            seed.query_row(
                                params![
                                    k.tenant_id,
                                    k.subject,
                                    k.currency,
                                    k.window_start,
                                    k.period.end(k.window_start)
                                ],
                                |r| r.get(0),
                            )
                            .map_err(db)?
                        } else {
                            0
                        };
                        put.execute(params![
                            k.tenant_id,
                            k.subject,
                            k.metric,
                            k.currency,
                            k.period.as_str(),
                            k.window_start,
                            t,
                            want.latest
                        ])
                        .map_err(db)?;
                        t
                    }
                };
                snap.counters.insert(k, total);
            }
        }
        let mut legs = tx
            .prepare_cached("SELECT account_id, reversed FROM reversal_legs WHERE transfer_id = ?1")
            .map_err(db)?;
        for t in &want.reversals {
            let rows: Vec<(String, i64)> = legs
                .query_map(params![t], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            for (a, n) in rows {
                snap.reversed.insert((t.clone(), a), n);
            }
        }
        let mut reference = tx
            .prepare_cached(
                "SELECT 1 FROM transfers WHERE tenant_id = ?1 AND reference = ?2 \
                 AND reference IS NOT NULL",
            )
            .map_err(db)?;
        for (t, r) in &want.references {
            if reference.exists(params![t, r]).map_err(db)? {
                snap.references.insert((t.clone(), r.clone()));
            }
        }
        let mut key = tx
            .prepare_cached(
                "SELECT expires_at, request_hash, response_status, response_body \
                 FROM idempotency_keys WHERE tenant_id = ?1 AND principal_id = ?2 AND idem_key = ?3",
            )
            .map_err(db)?;
        for (t, p, k) in &want.keys {
            let row: Option<(i64, String, i64, String)> = key
                .query_row(params![t, p, k], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
                .map_err(db)?;
            match row {
                Some((exp, request_hash, response_status, response_body)) if exp > want.latest => {
                    snap.keys.insert(
                        (t.clone(), p.clone(), k.clone()),
                        IdempotencyRecord {
                            request_hash,
                            response_status,
                            response_body,
                        },
                    );
                }
                Some(_) => expired_keys.push((t.clone(), p.clone(), k.clone())),
                None => {}
            }
        }
        // Each actor's standing, read under the write lock this transaction holds: a sign-out,
        // revocation, disable or role change committed before it is seen; one committed after
        // it comes after this batch. One primary-key look-up per distinct actor.
        let mut session = tx
            .prepare_cached(
                "SELECT u.status, u.roles, s.revoked_at IS NULL AND s.expires_at > ?3, \
                 COALESCE((SELECT t.status FROM tenants t WHERE t.id = s.tenant_id), 'active') = 'active', \
                 s.authenticated_at \
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1 AND u.id = ?2",
            )
            .map_err(db)?;
        let mut token = tx
            .prepare_cached(
                "SELECT u.status, u.roles, t.revoked_at IS NULL AND t.expires_at > ?3, \
                 COALESCE((SELECT n.status FROM tenants n WHERE n.id = t.tenant_id), 'active') = 'active', \
                 NULL \
                 FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?1 AND u.id = ?2",
            )
            .map_err(db)?;
        for (user, credential) in &want.actors {
            let (stmt, id) = match credential {
                ActorCredential::Session(id) => (&mut session, id),
                ActorCredential::ApiToken(id) => (&mut token, id),
            };
            let standing = stmt
                .query_row(params![id, user, want.latest], |r| {
                    Ok(ActorStanding {
                        user_status: r.get(0)?,
                        roles: r.get(1)?,
                        credential_live: r.get::<_, i64>(2)? != 0,
                        tenant_active: r.get::<_, i64>(3)? != 0,
                        authenticated_at: r.get(4)?,
                    })
                })
                .optional()
                .map_err(db)?;
            if let Some(s) = standing {
                snap.actors.insert((user.clone(), credential.clone()), s);
            }
        }
    }
    let loaded = started.elapsed();
    let plan = engine::plan(snap, batch, checks);
    let planned = started.elapsed();
    if atomic && !plan.none_refused() {
        tx.rollback().map_err(db)?;
        return Ok((false, plan.results));
    }
    {
        let mut del = tx
            .prepare_cached(
                "DELETE FROM idempotency_keys WHERE tenant_id = ?1 AND principal_id = ?2 AND idem_key = ?3",
            )
            .map_err(db)?;
        for (t, p, k) in &expired_keys {
            del.execute(params![t, p, k]).map_err(db)?;
        }
        let mut upd = tx
            .prepare_cached(
                "UPDATE accounts SET posted = ?2, pending_debits = ?3, pending_credits = ?4, \
                 entry_count = ?5, updated_at = ?6 WHERE id = ?1",
            )
            .map_err(db)?;
        for (a, at) in &plan.accounts {
            let n = upd
                .execute(params![
                    a.id,
                    a.posted,
                    a.pending_debits,
                    a.pending_credits,
                    a.entry_count,
                    at
                ])
                .map_err(db)?;
            if n != 1 {
                return Err(StoreError::Database(format!(
                    "posting updated {n} rows for account {}",
                    a.id
                )));
            }
        }
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO transfers (id, tenant_id, kind, currency, amount, debit_account_id, \
                 reference, details, reverses_id, created_by, created_at, subject_customer_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(db)?;
        for t in plan.transfers() {
            ins.execute(params![
                t.id,
                t.tenant_id,
                t.kind,
                t.currency,
                t.amount,
                t.debit_account_id,
                t.reference,
                t.details,
                t.reverses_id,
                t.created_by,
                t.created_at,
                t.subject_customer_id
            ])
            .map_err(db)?;
        }
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO entries (id, tenant_id, transfer_id, account_id, direction, amount, \
                 balance_after, account_seq, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(db)?;
        for e in plan.entries() {
            ins.execute(params![
                e.id,
                e.tenant_id,
                e.transfer_id,
                e.account_id,
                e.direction,
                e.amount,
                e.balance_after,
                e.account_seq,
                e.created_at
            ])
            .map_err(db)?;
        }
        let mut hold = tx
            .prepare_cached(
                "UPDATE holds SET status = ?2, captured_transfer_id = ?3, updated_at = ?4 \
                 WHERE id = ?1 AND status = 'active'",
            )
            .map_err(db)?;
        for h in &plan.holds {
            hold.execute(params![
                h.id,
                h.status,
                h.captured_transfer_id,
                h.updated_at
            ])
            .map_err(db)?;
        }
        let mut hold = tx.prepare_cached(posting::INSERT_HOLD).map_err(db)?;
        for h in &plan.new_holds {
            hold.execute(params![
                h.id,
                h.tenant_id,
                h.account_id,
                h.credit_account_id,
                h.currency,
                h.amount,
                h.expires_at,
                h.reference,
                h.created_by,
                h.created_at,
                h.purpose
            ])
            .map_err(db)?;
        }
        let mut count = tx.prepare_cached(posting::ADD_TO_COUNTER).map_err(db)?;
        for (k, delta) in &plan.counters {
            count
                .execute(params![
                    k.tenant_id,
                    k.subject,
                    k.metric,
                    k.currency,
                    k.period.as_str(),
                    k.window_start,
                    delta,
                    want.latest
                ])
                .map_err(db)?;
        }
        let mut event = tx
            .prepare_cached(
                "INSERT INTO ledger_events (id, tenant_id, topic, transfer_id, payload, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db)?;
        for e in &plan.events {
            event
                .execute(params![
                    e.id,
                    e.tenant_id,
                    e.topic,
                    e.transfer_id,
                    e.payload,
                    e.created_at
                ])
                .map_err(db)?;
        }
        let mut leg = tx
            .prepare_cached(
                "INSERT INTO reversal_legs (transfer_id, account_id, reversed) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (transfer_id, account_id) DO UPDATE SET reversed = excluded.reversed",
            )
            .map_err(db)?;
        for ((t, a), n) in &plan.reversed {
            leg.execute(params![t, a, n]).map_err(db)?;
        }
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO idempotency_keys (tenant_id, principal_id, idem_key, request_hash, \
                 response_status, response_body, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(db)?;
        for k in &plan.keys {
            ins.execute(params![
                k.tenant_id,
                k.principal_id,
                k.key,
                k.request_hash,
                super::OUTCOME_STATUS,
                k.body,
                k.created_at,
                k.expires_at
            ])
            .map_err(db)?;
        }
    }
    let written = started.elapsed();
    append_audit(&tx, sealer, alerts, &plan.audit)?;
    let audited = started.elapsed();
    tx.commit().map_err(db)?;
    posting::log_phases(
        batch.len(),
        [began, loaded, planned, written, audited],
        started.elapsed(),
    );
    Ok((true, plan.results))
}

/// Appends `events` to their chains, as the shared SQL does: the head row moves once per run of
/// one chain's records (its UPDATE happens under the write lock this transaction holds).
fn append_audit(
    tx: &rusqlite::Transaction<'_>,
    sealer: &AuditSealer,
    alerts: &super::alerts::AlertHook,
    events: &[NewAuditEvent],
) -> StoreResult<()> {
    for (chain, run) in super::audit::chain_runs(events) {
        tx.prepare_cached(
            "INSERT INTO audit_heads (chain, seq, hash) VALUES (?1, 0, ?2) ON CONFLICT (chain) DO NOTHING",
        )
        .map_err(db)?
        .execute(params![chain, GENESIS_HASH])
        .map_err(db)?;
        let mut head: (i64, String) = tx
            .prepare_cached("SELECT seq, hash FROM audit_heads WHERE chain = ?1")
            .map_err(db)?
            .query_row(params![chain], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO audit_events (id, chain, seq, tenant_id, occurred_at, actor_type, \
                 actor_id, action, target_type, target_id, outcome, reason, ip, request_id, \
                 prev_hash, hash, security_event) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )
            .map_err(db)?;
        for ev in run {
            let r = super::audit::next_record(sealer, ev, head.clone());
            ins.execute(params![
                r.id,
                r.chain,
                r.seq,
                r.tenant_id,
                r.occurred_at,
                r.actor_type,
                r.actor_id,
                r.action,
                r.target_type,
                r.target_id,
                r.outcome,
                r.reason,
                r.ip,
                r.request_id,
                r.prev_hash,
                r.hash,
                r.security_event
            ])
            .map_err(db)?;
            // Ledger batches carry no security events today; the hook keeps this append the
            // same choke point as the shared one if they ever do.
            if let Some(a) = super::alerts::on_record(alerts, &r) {
                tx.prepare_cached(
                    "INSERT INTO security_alerts (id, audit_event_id, tenant_id, event_type, severity, \
                     payload, status, attempts, next_attempt_at, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7)",
                )
                .map_err(db)?
                .execute(params![
                    a.id,
                    a.audit_event_id,
                    a.tenant_id,
                    a.event_type,
                    a.severity,
                    a.payload,
                    a.created_at
                ])
                .map_err(db)?;
            }
            head = (r.seq, r.hash);
        }
        tx.prepare_cached("UPDATE audit_heads SET seq = ?2, hash = ?3 WHERE chain = ?1")
            .map_err(db)?
            .execute(params![chain, head.0, head.1])
            .map_err(db)?;
    }
    Ok(())
}
