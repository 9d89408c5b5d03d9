//! The PostgreSQL ledger writer: the one place money is posted on this backend. A batch of
//! movements is loaded under row locks (`FOR UPDATE` in id order, so instances cannot deadlock
//! on each other), planned by the ledger core (`domain::ledger::engine`) and written with a
//! constant number of multi-row statements, whatever its size.
//!
//! Each multi-row statement stays under [`MAX_MESSAGE`] bytes of parameters: sqlx does not set
//! `TCP_NODELAY`, and a larger bind message is written in two parts whose tail Nagle's algorithm
//! holds until the server's delayed ACK (40 ms). Statements stay prepared (a shape recurs often).

use super::PgStore;
use crate::store::backend::SqlStore;

/// The largest parameter payload of one statement (see the module documentation).
const MAX_MESSAGE: usize = 12_000;

#[async_trait::async_trait]
impl crate::store::LedgerPort for PgStore {
    /// Posts `batch` in one transaction: the rows it touches are loaded and locked, the ledger
    /// core plans it, and the plan is written with multi-row statements, then committed. With
    /// `atomic`, nothing is written if any movement is refused.
    async fn post(
        &self,
        batch: &[crate::domain::ledger::LedgerCommand],
        atomic: bool,
        checks: &crate::domain::ledger::Checks,
    ) -> crate::store::StoreResult<(bool, Vec<crate::store::PostResult>)> {
        use crate::domain::ledger::engine::{self, AccountState, HoldState};
        use crate::store::audit::{opt_len, text_len};
        use crate::store::posting;
        const CHUNK: usize = 500;
        // Multi-row statements change shape with every batch size. Whether they are
        // kept prepared is the backend's choice (`true`): PostgreSQL keeps them (a
        // shape recurs often, and re-planning costs more than the cache).
        type Q = sqlx::QueryBuilder<sqlx::Postgres>;
        let want = engine::wanted(batch);
        let started = std::time::Instant::now();
        let mut tx = self.begin_write().await?;
        let began = started.elapsed();
        let mut snap = engine::Snapshot::default();

        // Holds first (captured ones, and active ones on or towards the batch's own
        // accounts expiring by its latest time): their accounts are loaded with the
        // movements' own. Only the touched accounts' holds: another tenant's (or
        // account's) expired holds are never this batch's work.
        let mut holds: Vec<HoldState> = Vec::new();
        for chunk in posting::chunks_by_size(&want.accounts, CHUNK / 2, MAX_MESSAGE / 2, |id| {
            text_len(id)
        }) {
            let mut qb = Q::new(
                "SELECT id, tenant_id, account_id, credit_account_id, amount, status, expires_at, purpose FROM holds WHERE status = 'active' AND expires_at <= ",
            );
            qb.push_bind(want.latest);
            qb.push(" AND (account_id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(") OR credit_account_id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(")) ORDER BY id FOR UPDATE");
            holds.extend(
                qb.build_query_as::<HoldState>()
                    .persistent(true)
                    .fetch_all(&mut *tx)
                    .await?,
            );
        }
        for chunk in posting::chunks_by_size(&want.holds, CHUNK, MAX_MESSAGE, |id| text_len(id)) {
            let mut qb = Q::new(
                "SELECT id, tenant_id, account_id, credit_account_id, amount, status, expires_at, purpose FROM holds WHERE id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(") ORDER BY id FOR UPDATE");
            holds.extend(
                qb.build_query_as::<HoldState>()
                    .persistent(true)
                    .fetch_all(&mut *tx)
                    .await?,
            );
        }
        let account_ids = engine::accounts_to_load(&want, &holds);
        snap.holds = holds.into_iter().map(|h| (h.id.clone(), h)).collect();
        // Accounts in id order, so concurrent writers (other instances) lock them in the
        // same order and cannot deadlock on each other.
        for chunk in posting::chunks_by_size(&account_ids, CHUNK, MAX_MESSAGE, |id| text_len(id)) {
            let mut qb = Q::new(
                "SELECT a.id, a.tenant_id, a.customer_id, a.kind, a.currency, a.status, a.posted, a.pending_debits, a.pending_credits, a.overdraft_limit, a.entry_count, \
                 COALESCE(c.processing_restricted, 0) AS restricted, COALESCE(c.kyc_tier, 0) AS kyc_tier \
                 FROM accounts a LEFT JOIN customers c ON c.id = a.customer_id WHERE a.id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(") ORDER BY a.id FOR UPDATE OF a");
            for a in qb
                .build_query_as::<AccountState>()
                .persistent(true)
                .fetch_all(&mut *tx)
                .await?
            {
                snap.accounts.insert(a.id.clone(), a);
            }
        }
        // Explicit subjects, then the running totals (after the accounts, in key order: the
        // lock order every writer follows). A missing total is inserted first (KYC's outgoing
        // metric seeded from the ledger, any other at zero) with `ON CONFLICT DO NOTHING`: a
        // concurrent writer inserting the same one makes this insert wait for its commit, and
        // the locking read below then sees the committed total.
        for id in &want.subjects {
            let row: Option<(String, String, i64, String)> = sqlx::query_as(
                "SELECT id, tenant_id, kyc_tier, status FROM customers WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, tenant_id, kyc_tier, status)) = row {
                snap.subjects.insert(
                    id.clone(),
                    engine::SubjectState {
                        id,
                        tenant_id,
                        kyc_tier,
                        active: status == "active",
                    },
                );
            }
        }
        let counter_keys = engine::counters_to_load(batch, &snap.accounts, &snap.subjects, checks);
        for k in counter_keys {
            // The row, locked; a missing one is inserted (seeded) first, then locked.
            let mut total = None;
            for seeded in [false, true] {
                total = sqlx::query_scalar::<_, i64>(
                    "SELECT total FROM ledger_counters WHERE tenant_id = $1 AND subject = $2 \
                     AND metric = $3 AND currency = $4 AND period = $5 AND window_start = $6 \
                     FOR UPDATE",
                )
                .bind(&k.tenant_id)
                .bind(&k.subject)
                .bind(&k.metric)
                .bind(&k.currency)
                .bind(k.period.as_str())
                .bind(k.window_start)
                .fetch_optional(&mut *tx)
                .await?;
                if total.is_some() || seeded {
                    break;
                }
                let seed: i64 = if k.metric == crate::domain::ledger::extension::OUTGOING {
                    sqlx::query_scalar::<_, i64>(crate::store::posting::SEED_OUTGOING)
                        .bind(&k.tenant_id)
                        .bind(&k.subject)
                        .bind(&k.currency)
                        .bind(k.window_start)
                        .bind(k.period.end(k.window_start))
                        .fetch_one(&mut *tx)
                        .await?
                } else {
                    0
                };
                sqlx::query(
                    "INSERT INTO ledger_counters (tenant_id, subject, metric, currency, period, \
                     window_start, total, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&k.tenant_id)
                .bind(&k.subject)
                .bind(&k.metric)
                .bind(&k.currency)
                .bind(k.period.as_str())
                .bind(k.window_start)
                .bind(seed)
                .bind(want.latest)
                .execute(&mut *tx)
                .await?;
            }
            let total = total.ok_or_else(|| {
                crate::store::StoreError::Database("a running total vanished while locked".into())
            })?;
            snap.counters.insert(k, total);
        }
        for chunk in posting::chunks_by_size(&want.reversals, CHUNK, MAX_MESSAGE, |id| text_len(id))
        {
            let mut qb = Q::new(
                "SELECT transfer_id, account_id, reversed FROM reversal_legs WHERE transfer_id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(") ORDER BY transfer_id, account_id FOR UPDATE");
            for (t, a, n) in qb
                .build_query_as::<(String, String, i64)>()
                .persistent(true)
                .fetch_all(&mut *tx)
                .await?
            {
                snap.reversed.insert((t, a), n);
            }
        }
        // References and keys are looked up by their unique indexes; a concurrent
        // writer inserting the same one makes this batch's insert fail, and the writer
        // then retries movement by movement.
        for chunk in posting::chunks_by_size(&want.references, CHUNK, MAX_MESSAGE, |(t, r)| {
            text_len(t) + text_len(r)
        }) {
            let mut qb = Q::new("WITH w (t, r) AS (");
            qb.push_values(chunk, |mut b, (t, r)| {
                b.push_bind(t.clone()).push_bind(r.clone());
            });
            qb.push(") SELECT x.tenant_id, x.reference FROM w JOIN transfers x ON x.tenant_id = w.t AND x.reference = w.r WHERE x.reference IS NOT NULL");
            for (t, r) in qb
                .build_query_as::<(String, Option<String>)>()
                .persistent(true)
                .fetch_all(&mut *tx)
                .await?
            {
                if let Some(r) = r {
                    snap.references.insert((t, r));
                }
            }
        }
        let mut expired_keys = Vec::new();
        for chunk in posting::chunks_by_size(&want.keys, CHUNK, MAX_MESSAGE, |(t, p, k)| {
            text_len(t) + text_len(p) + text_len(k)
        }) {
            let mut qb = Q::new("WITH w (t, p, k) AS (");
            qb.push_values(chunk, |mut b, (t, p, k)| {
                b.push_bind(t.clone())
                    .push_bind(p.clone())
                    .push_bind(k.clone());
            });
            qb.push(") SELECT i.tenant_id, i.principal_id, i.idem_key, i.expires_at, i.request_hash, i.response_status, i.response_body FROM w \
                     JOIN idempotency_keys i ON i.tenant_id = w.t AND i.principal_id = w.p AND i.idem_key = w.k");
            type KeyLoad = (String, String, String, i64, String, i64, String);
            for (t, p, k, exp, request_hash, response_status, response_body) in qb
                .build_query_as::<KeyLoad>()
                .persistent(true)
                .fetch_all(&mut *tx)
                .await?
            {
                if exp > want.latest {
                    snap.keys.insert(
                        (t, p, k),
                        crate::store::IdempotencyRecord {
                            request_hash,
                            response_status,
                            response_body,
                        },
                    );
                } else {
                    expired_keys.push((t, p, k));
                }
            }
        }

        // The actors' standing, after the accounts (the order erasure locks them in),
        // locked for share until the commit: their users first (in id order), then their
        // sessions and API tokens, a constant number of statements whatever the batch.
        let mut users: Vec<&str> = want.actors.iter().map(|(u, _)| u.as_str()).collect();
        users.dedup();
        let mut standing: std::collections::HashMap<String, (String, String)> = Default::default();
        for chunk in posting::chunks_by_size(&users, CHUNK, MAX_MESSAGE, |id| text_len(id)) {
            let mut qb = Q::new("SELECT id, status, roles FROM users WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.to_string());
            }
            qb.push(") ORDER BY id FOR SHARE");
            for (id, status, roles) in qb
                .build_query_as::<(String, String, String)>()
                .persistent(true)
                .fetch_all(&mut *tx)
                .await?
            {
                standing.insert(id, (status, roles));
            }
        }
        for (table, session) in [("sessions", true), ("api_tokens", false)] {
            let mut ids: Vec<&str> = want
                .actors
                .iter()
                .filter_map(|(_, c)| match c {
                    crate::store::ActorCredential::Session(id) if session => Some(id.as_str()),
                    crate::store::ActorCredential::ApiToken(id) if !session => Some(id.as_str()),
                    _ => None,
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for chunk in posting::chunks_by_size(&ids, CHUNK, MAX_MESSAGE, |id| text_len(id)) {
                // The tenant's status is read here, after the users' rows are locked (a
                // suspension locks them too): see `actor_standing_tx`.
                let mut qb = Q::new(
                    "SELECT id, user_id, revoked_at, expires_at, COALESCE((SELECT t.status FROM tenants t WHERE t.id = c.tenant_id), 'active'), ",
                );
                qb.push(if session {
                    "authenticated_at"
                } else {
                    "CAST(NULL AS BIGINT)"
                });
                qb.push(" FROM ");
                qb.push(table);
                qb.push(" c WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                qb.push(") ORDER BY id FOR SHARE");
                type Live = (String, String, Option<i64>, i64, String, Option<i64>);
                for (id, user, revoked, end, tenant_status, authenticated_at) in qb
                    .build_query_as::<Live>()
                    .persistent(true)
                    .fetch_all(&mut *tx)
                    .await?
                {
                    let Some((user_status, roles)) = standing.get(&user) else {
                        continue;
                    };
                    let credential = if session {
                        crate::store::ActorCredential::Session(id)
                    } else {
                        crate::store::ActorCredential::ApiToken(id)
                    };
                    snap.actors.insert(
                        (user, credential),
                        crate::domain::authz::ActorStanding {
                            user_status: user_status.clone(),
                            roles: roles.clone(),
                            credential_live: revoked.is_none() && end > want.latest,
                            tenant_active: tenant_status == "active",
                            authenticated_at,
                        },
                    );
                }
            }
        }

        let loaded = started.elapsed();
        let plan = engine::plan(snap, batch, checks);
        let planned = started.elapsed();
        if atomic && !plan.none_refused() {
            tx.rollback().await?;
            return Ok((false, plan.results));
        }

        // An expired key is free again: its old record makes way for the new one.
        for (t, p, k) in &expired_keys {
            sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND principal_id = $2 AND idem_key = $3")
                .bind(t)
                .bind(p)
                .bind(k)
                .execute(&mut *tx)
                .await?;
        }
        let account_size = |(a, _): &(AccountState, i64)| text_len(&a.id) + 48;
        for chunk in posting::chunks_by_size(&plan.accounts, CHUNK, MAX_MESSAGE, account_size) {
            let mut qb = Q::new(
                "WITH v (id, posted, pending_debits, pending_credits, entry_count, updated_at) AS (",
            );
            qb.push_values(chunk, |mut b, (a, at)| {
                b.push_bind(a.id.clone())
                    .push_bind(a.posted)
                    .push_bind(a.pending_debits)
                    .push_bind(a.pending_credits)
                    .push_bind(a.entry_count)
                    .push_bind(*at);
            });
            qb.push(") UPDATE accounts SET posted = v.posted, pending_debits = v.pending_debits, \
                     pending_credits = v.pending_credits, entry_count = v.entry_count, updated_at = v.updated_at \
                     FROM v WHERE accounts.id = v.id");
            let n = qb
                .build()
                .persistent(true)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if usize::try_from(n).ok() != Some(chunk.len()) {
                return Err(crate::store::StoreError::Database(format!(
                    "posting updated {n} of {} accounts",
                    chunk.len()
                )));
            }
        }
        let transfer_size = |t: &&crate::store::TransferRecord| {
            text_len(&t.id)
                + text_len(&t.tenant_id)
                + text_len(&t.kind)
                + text_len(&t.currency)
                + text_len(&t.debit_account_id)
                + opt_len(t.reference.as_deref())
                + opt_len(t.details.as_deref())
                + opt_len(t.reverses_id.as_deref())
                + opt_len(t.created_by.as_deref())
                + opt_len(t.subject_customer_id.as_deref())
                + 32
        };
        for chunk in crate::store::posting::chunks_by_size(
            &plan.transfers(),
            CHUNK,
            MAX_MESSAGE,
            transfer_size,
        ) {
            let mut qb = Q::new(
                "INSERT INTO transfers (id, tenant_id, kind, currency, amount, debit_account_id, reference, details, reverses_id, created_by, created_at, subject_customer_id) ",
            );
            qb.push_values(chunk, |mut b, t| {
                b.push_bind(t.id.clone())
                    .push_bind(t.tenant_id.clone())
                    .push_bind(t.kind.clone())
                    .push_bind(t.currency.clone())
                    .push_bind(t.amount)
                    .push_bind(t.debit_account_id.clone())
                    .push_bind(t.reference.clone())
                    .push_bind(t.details.clone())
                    .push_bind(t.reverses_id.clone())
                    .push_bind(t.created_by.clone())
                    .push_bind(t.created_at)
                    .push_bind(t.subject_customer_id.clone());
            });
            qb.build().persistent(true).execute(&mut *tx).await?;
        }
        let entry_size = |e: &&crate::store::EntryRecord| {
            text_len(&e.id)
                + text_len(&e.tenant_id)
                + text_len(&e.transfer_id)
                + text_len(&e.account_id)
                + text_len(&e.direction)
                + 48
        };
        for chunk in
            crate::store::posting::chunks_by_size(&plan.entries(), CHUNK, MAX_MESSAGE, entry_size)
        {
            let mut qb = Q::new(
                "INSERT INTO entries (id, tenant_id, transfer_id, account_id, direction, amount, balance_after, account_seq, created_at) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(e.id.clone())
                    .push_bind(e.tenant_id.clone())
                    .push_bind(e.transfer_id.clone())
                    .push_bind(e.account_id.clone())
                    .push_bind(e.direction.clone())
                    .push_bind(e.amount)
                    .push_bind(e.balance_after)
                    .push_bind(e.account_seq)
                    .push_bind(e.created_at);
            });
            qb.build().persistent(true).execute(&mut *tx).await?;
        }
        for h in &plan.holds {
            sqlx::query("UPDATE holds SET status = $2, captured_transfer_id = $3, updated_at = $4 WHERE id = $1 AND status = 'active'")
                .bind(&h.id)
                .bind(h.status)
                .bind(&h.captured_transfer_id)
                .bind(h.updated_at)
                .execute(&mut *tx)
                .await?;
        }
        for h in &plan.new_holds {
            sqlx::query(crate::store::posting::INSERT_HOLD)
                .bind(&h.id)
                .bind(&h.tenant_id)
                .bind(&h.account_id)
                .bind(&h.credit_account_id)
                .bind(&h.currency)
                .bind(h.amount)
                .bind(h.expires_at)
                .bind(&h.reference)
                .bind(&h.created_by)
                .bind(h.created_at)
                .bind(h.purpose)
                .execute(&mut *tx)
                .await?;
        }
        for (k, delta) in &plan.counters {
            sqlx::query(crate::store::posting::ADD_TO_COUNTER)
                .bind(&k.tenant_id)
                .bind(&k.subject)
                .bind(&k.metric)
                .bind(&k.currency)
                .bind(k.period.as_str())
                .bind(k.window_start)
                .bind(*delta)
                .bind(want.latest)
                .execute(&mut *tx)
                .await?;
        }
        for e in &plan.events {
            sqlx::query(
                "INSERT INTO ledger_events (id, tenant_id, topic, transfer_id, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&e.id)
            .bind(&e.tenant_id)
            .bind(&e.topic)
            .bind(&e.transfer_id)
            .bind(&e.payload)
            .bind(e.created_at)
            .execute(&mut *tx)
            .await?;
        }
        for ((t, a), n) in &plan.reversed {
            sqlx::query(
                "INSERT INTO reversal_legs (transfer_id, account_id, reversed) VALUES ($1, $2, $3) \
                 ON CONFLICT (transfer_id, account_id) DO UPDATE SET reversed = excluded.reversed",
            )
            .bind(t)
            .bind(a)
            .bind(*n)
            .execute(&mut *tx)
            .await?;
        }
        let key_size = |k: &engine::KeyRow| {
            text_len(&k.tenant_id)
                + text_len(&k.principal_id)
                + text_len(&k.key)
                + text_len(&k.request_hash)
                + text_len(&k.body)
                + 32
        };
        for chunk in posting::chunks_by_size(&plan.keys, CHUNK, MAX_MESSAGE, key_size) {
            let mut qb = Q::new(
                "INSERT INTO idempotency_keys (tenant_id, principal_id, idem_key, request_hash, response_status, response_body, created_at, expires_at) ",
            );
            qb.push_values(chunk, |mut b, k| {
                b.push_bind(k.tenant_id.clone())
                    .push_bind(k.principal_id.clone())
                    .push_bind(k.key.clone())
                    .push_bind(k.request_hash.clone())
                    .push_bind(crate::store::OUTCOME_STATUS)
                    .push_bind(k.body.clone())
                    .push_bind(k.created_at)
                    .push_bind(k.expires_at);
            });
            qb.build().persistent(true).execute(&mut *tx).await?;
        }
        let written = started.elapsed();
        self.append_audit_tx(&mut tx, &plan.audit).await?;
        let audited = started.elapsed();
        tx.commit().await?;
        posting::log_phases(
            batch.len(),
            [began, loaded, planned, written, audited],
            started.elapsed(),
        );
        Ok((true, plan.results))
    }
}
