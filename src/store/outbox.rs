//! What the two outboxes (the mail outbox and the security-alert outbox) share: the delivery
//! protocol and its SQL. A row is `pending` until a delivery worker claims it: the claim is one
//! conditional update that marks it `sending`, leases it and counts an attempt, so concurrent
//! workers on one database never claim the same row, and a row whose worker died is claimed
//! again once its lease has expired. The attempt then ends the row (its done status, or
//! `failed`) or puts it back to `pending` with a later attempt time. The two steps ([`claim`],
//! [`finish`]) are written once, generically over the store and the table ([`OutboxTable`]).

use super::StoreResult;
use super::backend::{Backend, RowsAffected, SqlStore};
use crate::clock::Timestamp;

/// How a delivery attempt of a claimed outbox row ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered (sent mail, an accepted webhook): the row is finished.
    Done,
    /// Try again at `next_attempt_at`.
    Retry {
        next_attempt_at: Timestamp,
        error: String,
    },
    /// Given up: no more attempts.
    Failed { error: String },
}

/// The statements of one outbox table. Binds: claim (`now`, `lease_until`, `limit`); done
/// (`id`, `now`); retry (`id`, `next_attempt_at`, `error`); failed (`id`, `now`, `error`). The
/// finishing statements change only a row still `sending`, so a late worker whose lease was
/// taken over changes nothing.
#[derive(Debug)]
pub struct OutboxTable {
    pub claim: &'static str,
    pub done: &'static str,
    pub retry: &'static str,
    pub failed: &'static str,
}

/// `$clear`: the assignments that drop a finished row's payload (mail keeps no sealed message
/// once it is sent or given up on; an alert's payload holds no personal data and stays).
macro_rules! outbox_table {
    ($table:literal, $done:literal, $clear:literal) => {
        OutboxTable {
            // The condition is repeated in the outer UPDATE: on PostgreSQL a row another
            // worker claimed meanwhile is re-checked against it and skipped.
            claim: concat!(
                "UPDATE ",
                $table,
                " SET status = 'sending', lease_until = $2, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM ",
                $table,
                " \
                              WHERE (status = 'pending' AND next_attempt_at <= $1) \
                                 OR (status = 'sending' AND lease_until <= $1) \
                              ORDER BY next_attempt_at LIMIT $3) \
                 AND ((status = 'pending' AND next_attempt_at <= $1) \
                      OR (status = 'sending' AND lease_until <= $1)) \
                 RETURNING *"
            ),
            done: concat!(
                "UPDATE ",
                $table,
                " SET status = '",
                $done,
                "', ",
                $clear,
                "lease_until = NULL, last_error = NULL, finished_at = $2 \
                 WHERE id = $1 AND status = 'sending'"
            ),
            retry: concat!(
                "UPDATE ",
                $table,
                " SET status = 'pending', lease_until = NULL, \
                 next_attempt_at = $2, last_error = $3 WHERE id = $1 AND status = 'sending'"
            ),
            failed: concat!(
                "UPDATE ",
                $table,
                " SET status = 'failed', ",
                $clear,
                "lease_until = NULL, last_error = $3, finished_at = $2 \
                 WHERE id = $1 AND status = 'sending'"
            ),
        }
    };
}

/// The mail outbox: a sent message is `sent`, and its sealed message is cleared when finished.
pub const MAIL: OutboxTable = outbox_table!("mail_outbox", "sent", "message = NULL, ");

/// The security-alert outbox: a webhook-accepted alert is `delivered`.
pub const ALERTS: OutboxTable = outbox_table!("security_alerts", "delivered", "");

/// Claims up to `limit` rows of `table` due at `now` (pending and due, or sending with an
/// expired lease), counting one attempt each and leasing them until `lease_until`.
pub(super) async fn claim<S: SqlStore<Db = B>, B: Backend, R>(
    store: &S,
    table: &OutboxTable,
    now: Timestamp,
    lease_until: Timestamp,
    limit: i64,
) -> StoreResult<Vec<R>>
where
    R: for<'r> sqlx::FromRow<'r, B::Row> + Send + Unpin,
{
    let mut tx = store.begin_write().await?;
    let rows: Vec<R> = sqlx::query_as(table.claim)
        .bind(now.as_micros())
        .bind(lease_until.as_micros())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Records how the attempt on a claimed row ended; `false` if it was not claimed any more.
pub(super) async fn finish<S: SqlStore<Db = B>, B: Backend>(
    store: &S,
    table: &OutboxTable,
    id: &str,
    now: Timestamp,
    outcome: &Delivery,
) -> StoreResult<bool> {
    let mut tx = store.begin_write().await?;
    let q = match outcome {
        Delivery::Done => sqlx::query(table.done).bind(id).bind(now.as_micros()),
        Delivery::Retry {
            next_attempt_at,
            error,
        } => sqlx::query(table.retry)
            .bind(id)
            .bind(next_attempt_at.as_micros())
            .bind(error.clone()),
        Delivery::Failed { error } => sqlx::query(table.failed)
            .bind(id)
            .bind(now.as_micros())
            .bind(error.clone()),
    };
    let n = q.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_clears_its_sealed_message_when_finished_and_alerts_keep_their_payload() {
        assert!(
            MAIL.done
                .starts_with("UPDATE mail_outbox SET status = 'sent', message = NULL, ")
        );
        assert!(MAIL.failed.contains("status = 'failed', message = NULL, "));
        assert!(!MAIL.retry.contains("message = NULL"));
        assert!(
            ALERTS
                .done
                .starts_with("UPDATE security_alerts SET status = 'delivered', lease_until")
        );
        assert!(!ALERTS.failed.contains("payload"));
        for t in [&MAIL, &ALERTS] {
            for finish in [t.done, t.retry, t.failed] {
                assert!(
                    finish.ends_with("WHERE id = $1 AND status = 'sending'"),
                    "{finish}"
                );
            }
            assert_eq!(t.claim.matches("lease_until <= $1").count(), 2);
        }
    }
}
