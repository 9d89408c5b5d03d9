//! The writer's I/O helpers shared by both backends: statement sizing, phase logging and the
//! statements of the extension contract's side writes (running totals, review holds). The
//! rules themselves are the ledger core's (`domain::ledger::engine`).

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
    {
        use crate::observability::phases::{Phase, record};
        record(Phase::Load, loaded);
        record(Phase::Engine, planned.saturating_sub(loaded));
        record(Phase::Write, written.saturating_sub(planned));
        record(Phase::Audit, audited.saturating_sub(written));
        record(Phase::Commit, total.saturating_sub(audited));
    }
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

/// What a customer sent in a currency over a window `[$4, $5)`: the non-reversal debits of its
/// account, except those counted against another subject, and the movements that name it as
/// their subject. Binds: tenant, customer, currency, window start, window end.
pub(crate) const SEED_OUTGOING: &str = "SELECT CAST(\
     COALESCE((SELECT SUM(e.amount) FROM accounts a JOIN entries e ON e.account_id = a.id \
               JOIN transfers t ON t.id = e.transfer_id \
               WHERE a.tenant_id = $1 AND a.customer_id = $2 AND a.currency = $3 \
               AND e.direction = 'debit' AND t.kind <> 'reversal' \
               AND t.subject_customer_id IS NULL \
               AND e.created_at >= $4 AND e.created_at < $5), 0) \
   + COALESCE((SELECT SUM(t.amount) FROM transfers t \
               WHERE t.tenant_id = $1 AND t.subject_customer_id = $2 AND t.currency = $3 \
               AND t.kind <> 'reversal' AND t.created_at >= $4 AND t.created_at < $5), 0) AS BIGINT)";

/// Adds to a running total, creating it if nobody loaded it (binds: the key's six columns,
/// the amount, the time).
pub(crate) const ADD_TO_COUNTER: &str = "INSERT INTO ledger_counters (tenant_id, subject, metric, \
     currency, period, window_start, total, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (tenant_id, subject, metric, currency, period, window_start) \
     DO UPDATE SET total = ledger_counters.total + excluded.total, updated_at = excluded.updated_at";

/// Inserts a hold the ledger core placed, a payment or a review hold (binds: id, tenant,
/// account, credit account, currency, amount, expiry, reference, creator, time, purpose).
pub(crate) const INSERT_HOLD: &str = "INSERT INTO holds (id, tenant_id, account_id, \
     credit_account_id, currency, amount, status, expires_at, reference, created_by, created_at, \
     updated_at, purpose) VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10, $10, $11)";

#[cfg(test)]
mod tests {
    use super::*;

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
}
