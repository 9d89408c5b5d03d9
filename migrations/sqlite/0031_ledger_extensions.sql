-- Issue 15: what the ledger core's extension contract commits in the posting transaction.
--
-- Running totals kept under the posting lock (KYC's daily and monthly outgoing totals today,
-- transaction monitoring's windowed aggregates later): one row per tenant, subject customer,
-- metric, currency and window. The writer loads the rows a batch needs inside its transaction
-- (SQLite's write lock; PostgreSQL row locks), the ledger core checks and adds to them, and the
-- writer stores the new totals before the commit, so a limit holds exactly however many
-- instances post.
CREATE TABLE ledger_counters (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    subject       TEXT NOT NULL,
    metric        TEXT NOT NULL,
    currency      TEXT NOT NULL,
    period        TEXT NOT NULL CHECK (period IN ('day', 'month')),
    window_start  BIGINT NOT NULL,
    total         BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, subject, metric, currency, period, window_start)
) WITHOUT ROWID;

-- The customer a movement is counted against when its accounts do not say (cash paid in at a
-- counter by a walk-in customer); NULL for every other movement.
ALTER TABLE transfers ADD COLUMN subject_customer_id TEXT;
CREATE INDEX transfers_subject ON transfers (tenant_id, subject_customer_id, created_at)
    WHERE subject_customer_id IS NOT NULL;

-- A hold is either a payment authorisation (placed, captured or voided through the holds API)
-- or a movement a pre-commit check sent to review: the money it would have moved is reserved
-- until the review decides (the holds API neither captures nor voids it).
ALTER TABLE holds ADD COLUMN purpose TEXT NOT NULL DEFAULT 'payment'
    CHECK (purpose IN ('payment', 'review'));

-- Events committed in the same transaction as the movement that caused them (pre-commit
-- checks' side writes today; the webhook outbox reads them later).
CREATE TABLE ledger_events (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    topic        TEXT NOT NULL,
    transfer_id  TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX ledger_events_tenant ON ledger_events (tenant_id, id);
