-- Issue 14 (items 1 and 2): the root key proven against the database at every start, and
-- blind-index keys versioned apart from encryption keys.

-- What the database was initialised with: the fingerprint of the root key (`root_id`, as in
-- `master_keys`), a 256-bit keyed check value only that root key reproduces, and the id of the
-- JWT signing key. One row, written once by the first start (or, for a database created before
-- this table, by the first start whose root key opens its active master key and its newest
-- audit record). Nothing here is secret.
CREATE TABLE root_key_check (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    root_id      TEXT NOT NULL,
    check_value  TEXT NOT NULL,
    jwt_kid      TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- Which version of the tenant's index key computed a blind-index row (NULL: written before
-- versions were recorded), and the newest index version a customer's rows were computed under
-- (0: unknown). An index-key rotation re-indexes every customer below the new version before
-- the old version is retired.
ALTER TABLE customer_lookup ADD COLUMN index_version BIGINT;
ALTER TABLE customers ADD COLUMN lookup_version BIGINT NOT NULL DEFAULT 0;
