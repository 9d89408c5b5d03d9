//! The group-commit queue: the one caller of the store's `LedgerPort`.

use super::*;

/// Most movements posted in one transaction.
pub(super) const MAX_BATCH: usize = 512;

/// What the queue carries: one movement, or an atomic batch (posted alone, all or nothing).
pub(super) enum Job {
    One(
        Box<LedgerCommand>,
        oneshot::Sender<Result<PostResult, StoreError>>,
    ),
    Atomic(
        Vec<LedgerCommand>,
        oneshot::Sender<Result<(bool, Vec<PostResult>), StoreError>>,
    ),
}

/// The single writer of money movements in this process: one group-commit queue in front of
/// the store's [`LedgerPort`](crate::store::LedgerPort). Movements waiting in the queue are
/// posted together in one transaction (one commit's fsync shared by everything that arrived
/// meanwhile); an atomic batch is posted in a transaction of its own, in queue order.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<Job>,
    /// The pre-commit checks: the writer runs them under lock, and their `stage` before a
    /// movement joins the queue.
    checks: crate::domain::ledger::Checks,
}

impl LedgerWriter {
    /// Starts the writer task on the current runtime.
    /// `checks` are the pre-commit checks the ledger core runs on every movement.
    pub fn start(store: Arc<dyn Store>, checks: crate::domain::ledger::Checks) -> Self {
        let (queue, mut rx) = mpsc::channel::<Job>(16 * MAX_BATCH);
        let task_checks = checks.clone();
        tokio::spawn(async move {
            let checks = task_checks;
            let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
                let mut ones: Vec<LedgerCommand> = Vec::new();
                let mut replies = Vec::new();
                for job in jobs.drain(..) {
                    match job {
                        Job::One(m, reply) => {
                            ones.push(*m);
                            replies.push(reply);
                        }
                        Job::Atomic(batch, reply) => {
                            // Whatever queued before it commits first.
                            let (before, waiting) =
                                (std::mem::take(&mut ones), std::mem::take(&mut replies));
                            post_ones(store.as_ref(), &checks, before, waiting).await;
                            let _ = reply.send(store.ledger().post(&batch, true, &checks).await);
                        }
                    }
                }
                post_ones(store.as_ref(), &checks, ones, replies).await;
            }
        });
        Self { queue, checks }
    }

    pub(super) async fn post(&self, m: impl Into<LedgerCommand>) -> AppResult<PostResult> {
        let rx = self.enqueue(m).await?;
        rx.await
            .map_err(|_| AppError::internal("the ledger writer dropped a movement"))?
            .map_err(AppError::from)
    }

    /// Queues a movement; the receiver yields its result once its batch has committed.
    pub(super) async fn enqueue(
        &self,
        m: impl Into<LedgerCommand>,
    ) -> AppResult<oneshot::Receiver<Result<PostResult, StoreError>>> {
        let m = m.into();
        if let LedgerCommand::Transfer(t) = &m {
            for c in self.checks.iter() {
                c.stage(t);
            }
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Job::One(Box::new(m), tx))
            .await
            .map_err(|_| AppError::internal("the ledger writer has stopped"))?;
        Ok(rx)
    }

    /// Posts `batch` all or nothing, through the queue; returns whether it committed.
    pub(super) async fn post_atomic(
        &self,
        batch: Vec<TransferCommand>,
    ) -> AppResult<(bool, Vec<PostResult>)> {
        for (c, m) in self
            .checks
            .iter()
            .flat_map(|c| batch.iter().map(move |m| (c, m)))
        {
            c.stage(m);
        }
        let batch = batch.into_iter().map(LedgerCommand::Transfer).collect();
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Job::Atomic(batch, tx))
            .await
            .map_err(|_| AppError::internal("the ledger writer has stopped"))?;
        rx.await
            .map_err(|_| AppError::internal("the ledger writer dropped a batch"))?
            .map_err(AppError::from)
    }
}

/// Posts the queued single movements in one transaction and answers each.
pub(super) async fn post_ones(
    store: &dyn Store,
    checks: &crate::domain::ledger::Checks,
    batch: Vec<LedgerCommand>,
    replies: Vec<oneshot::Sender<Result<PostResult, StoreError>>>,
) {
    if batch.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let r = store.ledger().post(&batch, false, checks).await;
    tracing::debug!(
        size = batch.len(),
        elapsed_us = started.elapsed().as_micros(),
        "ledger batch committed"
    );
    match r {
        Ok((_, results)) => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        // Storage cannot write (a full disk, a lost connection): every movement of the batch
        // gets that answer (503), none is retried here. Retrying would fail the same way, and a
        // commit whose answer was lost with its connection may have gone through: only the
        // client's retry, with its idempotency key, can tell.
        Err(StoreError::Unavailable(e)) => {
            crate::warn_limited!(e, "ledger batch failed: storage unavailable");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable(e.clone())));
            }
        }
        // The batch rolled back as a whole (e.g. a deadlock or a key taken by another
        // instance): retry each movement alone so one failure does not fail its neighbours.
        Err(batch_err) => {
            crate::warn_limited!(
                batch_err,
                size = batch.len(),
                "ledger batch failed; retrying one by one"
            );
            for (m, reply) in batch.iter().zip(replies) {
                let r = store
                    .ledger()
                    .post(std::slice::from_ref(m), false, checks)
                    .await
                    .and_then(|(_, mut v)| {
                        v.pop()
                            .ok_or_else(|| StoreError::Database("empty result".to_owned()))
                    });
                let _ = reply.send(r);
            }
        }
    }
}
