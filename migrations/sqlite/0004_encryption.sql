-- Envelope encryption (issue 4): versioned master key-encryption keys wrapped by the root key,
-- data-encryption keys per tenant, per customer and per tenant blind index wrapped by a master
-- key version; transfer details stored encrypted; customers' personal data and blind indexes.

-- Master key-encryption keys (KEKs). `wrapped` is the KEK sealed by the root key named by
-- `root_id`; it is cleared a grace period after the version is retired (no data key is wrapped by
-- it any more).
CREATE TABLE master_keys (
    version     BIGINT PRIMARY KEY,
    root_id     TEXT NOT NULL,
    wrapped     TEXT,
    status      TEXT NOT NULL CHECK (status IN ('active', 'retiring', 'retired')),
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);
CREATE UNIQUE INDEX master_keys_one_active ON master_keys (status) WHERE status = 'active';

-- Data-encryption keys (DEKs). One id per owner (`tenant`, `index`, `customer:<id>`), one row
-- per version. `spent`: its encryption budget ran out, it still opens what it sealed but seals
-- nothing new. `retiring`: an operator rotated it, its ciphertexts are being re-encrypted.
-- `retired`: nothing is sealed by it any more; its `wrapped` material is cleared a grace period
-- later (a read that fetched a ciphertext just before its re-encryption still opens it).
-- `destroyed` (crypto-shredding): `wrapped` cleared at once. `encryptions` counts the
-- encryptions reserved under it.
CREATE TABLE data_keys (
    id           TEXT NOT NULL,
    version      BIGINT NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    owner        TEXT NOT NULL,
    kek_version  BIGINT NOT NULL REFERENCES master_keys (version),
    wrapped      TEXT,
    status       TEXT NOT NULL CHECK (status IN ('active', 'spent', 'retiring', 'retired', 'destroyed')),
    encryptions  BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT,
    PRIMARY KEY (id, version)
);
CREATE UNIQUE INDEX data_keys_active_owner ON data_keys (tenant_id, owner) WHERE status = 'active';
CREATE INDEX data_keys_owner ON data_keys (tenant_id, owner, version);
CREATE INDEX data_keys_kek ON data_keys (kek_version);
CREATE INDEX data_keys_status ON data_keys (status);

-- Transfer details (description, metadata, counterparty) are one ciphertext under the tenant's
-- data key. The money columns stay append-only; only the ciphertext may be rewritten (by
-- re-encryption under a new key version).
ALTER TABLE transfers RENAME COLUMN description TO details;
DROP TRIGGER transfers_append_only_update;
CREATE TRIGGER transfers_append_only_update
BEFORE UPDATE OF id, tenant_id, kind, currency, amount, debit_account_id, reference, reverses_id, created_by, created_at ON transfers
BEGIN SELECT RAISE(ABORT, 'transfers are append-only'); END;

-- Customers' personal data: one ciphertext under the customer's own data key (destroyed on
-- erasure), exact-match look-ups through blind indexes.
ALTER TABLE customers ADD COLUMN pii TEXT;
ALTER TABLE customers ADD COLUMN status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'erased'));
ALTER TABLE customers ADD COLUMN processing_restricted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE customers ADD COLUMN updated_at BIGINT;
ALTER TABLE customers ADD COLUMN erased_at BIGINT;

CREATE TABLE customer_lookup (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    field        TEXT NOT NULL,
    digest       TEXT NOT NULL,
    customer_id  TEXT NOT NULL REFERENCES customers (id),
    PRIMARY KEY (tenant_id, field, digest, customer_id)
);
CREATE INDEX customer_lookup_customer ON customer_lookup (customer_id);
