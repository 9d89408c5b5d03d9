-- Ledger: customers, accounts per currency, transfers and their entries, idempotency keys.
-- Amounts are BIGINT minor units. Transfers and entries are append-only: triggers refuse
-- UPDATE and DELETE, so corrections can only be new transfers.

CREATE TABLE customers (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    user_id      TEXT REFERENCES users (id),
    external_ref TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX customers_tenant ON customers (tenant_id, id);
CREATE UNIQUE INDEX customers_user ON customers (tenant_id, user_id) WHERE user_id IS NOT NULL;

CREATE TABLE accounts (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    customer_id      TEXT REFERENCES customers (id),
    kind             TEXT NOT NULL CHECK (kind IN ('customer', 'settlement', 'fees', 'suspense')),
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'frozen', 'closed')),
    posted           BIGINT NOT NULL DEFAULT 0,
    pending_debits   BIGINT NOT NULL DEFAULT 0 CHECK (pending_debits >= 0),
    pending_credits  BIGINT NOT NULL DEFAULT 0 CHECK (pending_credits >= 0),
    overdraft_limit  BIGINT NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    entry_count      BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    -- The ledger's floor, enforced by storage as well as by the conditional update.
    CHECK (posted - pending_debits >= -overdraft_limit)
);
CREATE UNIQUE INDEX accounts_customer_currency ON accounts (tenant_id, customer_id, currency) WHERE customer_id IS NOT NULL;
CREATE UNIQUE INDEX accounts_system ON accounts (tenant_id, kind, currency) WHERE customer_id IS NULL;
CREATE INDEX accounts_tenant ON accounts (tenant_id, id);

CREATE TABLE transfers (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    kind              TEXT NOT NULL CHECK (kind IN ('transfer', 'deposit', 'withdrawal', 'reversal', 'capture')),
    currency          TEXT NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount > 0),
    debit_account_id  TEXT NOT NULL REFERENCES accounts (id),
    reference         TEXT,
    description       TEXT,
    reverses_id       TEXT REFERENCES transfers (id),
    created_by        TEXT,
    created_at        BIGINT NOT NULL
);
CREATE UNIQUE INDEX transfers_reference ON transfers (tenant_id, reference) WHERE reference IS NOT NULL;
CREATE INDEX transfers_tenant ON transfers (tenant_id, id);
CREATE INDEX transfers_debit ON transfers (debit_account_id, id);

CREATE TABLE entries (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    transfer_id    TEXT NOT NULL REFERENCES transfers (id),
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    direction      TEXT NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount         BIGINT NOT NULL CHECK (amount > 0),
    balance_after  BIGINT NOT NULL,
    account_seq    BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (account_id, account_seq)
);
CREATE INDEX entries_transfer ON entries (transfer_id);

-- How much of each transfer has been reversed (transfers themselves are append-only).
CREATE TABLE reversal_totals (
    transfer_id  TEXT PRIMARY KEY REFERENCES transfers (id),
    reversed     BIGINT NOT NULL CHECK (reversed >= 0)
);

-- Reservations against an account's available balance until they expire.
CREATE TABLE holds (
    id                    TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL REFERENCES tenants (id),
    account_id            TEXT NOT NULL REFERENCES accounts (id),
    currency              TEXT NOT NULL,
    amount                BIGINT NOT NULL CHECK (amount > 0),
    status                TEXT NOT NULL CHECK (status IN ('active', 'captured', 'voided', 'expired')),
    expires_at            BIGINT NOT NULL,
    reference             TEXT,
    captured_transfer_id  TEXT REFERENCES transfers (id),
    created_by            TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE INDEX holds_account_active ON holds (account_id, status, expires_at);
CREATE INDEX holds_tenant ON holds (tenant_id, id);

CREATE TABLE idempotency_keys (
    tenant_id        TEXT NOT NULL,
    principal_id     TEXT NOT NULL,
    idem_key         TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    response_status  BIGINT NOT NULL,
    response_body    TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, principal_id, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TRIGGER transfers_append_only_update BEFORE UPDATE ON transfers
BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
CREATE TRIGGER transfers_append_only_delete BEFORE DELETE ON transfers
BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;
CREATE TRIGGER entries_append_only_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'entries are append-only'); END;
CREATE TRIGGER entries_append_only_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'entries are append-only'); END;
