//! The writer's I/O helpers shared by both backends: statement sizing and phase logging. The
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
