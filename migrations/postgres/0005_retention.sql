-- Retention: where a pruned audit chain now starts, and the indexes the retention job's
-- deletions use. Identical on both backends.

-- One row per chain whose oldest records were pruned: records up to `seq` are gone, and the
-- record at `seq + 1` must carry `prev_hash = hash`. `mac` is HMAC-SHA256 (audit key) over
-- chain, seq, hash and pruned_at, so a checkpoint cannot be forged to hide deleted records.
CREATE TABLE audit_checkpoints (
    chain      TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    pruned_at  BIGINT NOT NULL,
    mac        TEXT NOT NULL
);

CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX sessions_revoked ON sessions (revoked_at);
