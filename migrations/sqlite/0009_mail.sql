-- Password reset by email, and the durable outbox its messages travel through.

-- One row per reset link sent. Only the SHA-256 digest of the token is stored (the token
-- itself exists only in the email). A token is live while used_at and invalidated_at are NULL
-- and expires_at is in the future; spending it is a conditional UPDATE in the transaction that
-- changes the password. A newer request invalidates the user's older live tokens.
CREATE TABLE password_reset_tokens (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    token_hash      TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT,
    invalidated_at  BIGINT
);
CREATE INDEX password_reset_tokens_user ON password_reset_tokens (user_id, created_at);
CREATE INDEX password_reset_tokens_expiry ON password_reset_tokens (expires_at);

-- Messages waiting to be delivered (or delivered, until retention removes the row).
-- `message` is the envelope recipient and the RFC 5322 text sealed with the tenant's data key
-- (it carries the reset link); it is cleared once the message is sent or given up on.
-- status: pending -> sending (claimed until lease_until) -> sent | pending (retry) | failed.
-- last_error holds an SMTP stage and reply code, never addresses or server text.
CREATE TABLE mail_outbox (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    kind             TEXT NOT NULL,
    message          TEXT,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_until      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX mail_outbox_due ON mail_outbox (status, next_attempt_at);
