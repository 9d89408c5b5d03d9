-- Account security: typed security events in the audit chain, per-tenant security policy,
-- session activity and step-up times, sign-in throttling (per account and per address),
-- password history, and the MFA flag sessions consult.

-- Set on audit records that are security events (`GET /v1/security-events`). Covered by the
-- record's hash when present.
ALTER TABLE audit_events ADD COLUMN security_event TEXT;
CREATE INDEX audit_events_security ON audit_events (chain, seq) WHERE security_event IS NOT NULL;

-- One JSON document per tenant (domain::security::SecurityPolicy); no row means the defaults.
CREATE TABLE tenant_security (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants (id),
    policy      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT
);

-- last_used_at: the idle timeout; authenticated_at: the last password (or MFA) proof, for
-- step-up. Both microseconds; NULL on sessions from before this migration (created_at then).
ALTER TABLE sessions ADD COLUMN last_used_at BIGINT;
ALTER TABLE sessions ADD COLUMN authenticated_at BIGINT;
CREATE INDEX sessions_user_live ON sessions (user_id, revoked_at);

-- Failed sign-ins by key: 'acct:<sha256(tenant|email)>' (whether or not the account exists,
-- so a lock says nothing about existence) and 'ip:<address>' (spraying across accounts).
CREATE TABLE login_throttle (
    key                TEXT PRIMARY KEY,
    tenant_id          TEXT,
    failures           BIGINT NOT NULL,
    window_started_at  BIGINT NOT NULL,
    last_failed_at     BIGINT NOT NULL,
    locked_until       BIGINT
);

-- Previous password hashes (Argon2id PHC strings), newest kept per the tenant's policy.
CREATE TABLE password_history (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id),
    tenant_id      TEXT,
    password_hash  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX password_history_user ON password_history (user_id, created_at);

-- 1 once the user has an active second factor (maintained by the MFA use cases).
ALTER TABLE users ADD COLUMN mfa_enabled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN password_changed_at BIGINT;
