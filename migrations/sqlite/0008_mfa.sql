-- TOTP multi-factor authentication (RFC 6238), recovery codes and sign-in challenges.

-- One row per user with a second factor or an enrolment in progress. `secret` (active) and
-- `pending_secret` (awaiting confirmation) are AES-256-GCM ciphertexts (kx1.…), AAD row =
-- user_id. `last_step` is the last accepted TOTP time step: only later steps are accepted
-- (a conditional UPDATE), so no code works twice.
CREATE TABLE mfa_totp (
    user_id             TEXT PRIMARY KEY REFERENCES users (id),
    tenant_id           TEXT REFERENCES tenants (id),
    secret              TEXT,
    pending_secret      TEXT,
    pending_created_at  BIGINT,
    enabled_at          BIGINT,
    last_step           BIGINT,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX mfa_totp_tenant ON mfa_totp (tenant_id);

-- Single-use recovery codes: hex SHA-256 of (user id, code); `used_at` set once, atomically.
CREATE TABLE mfa_recovery_codes (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    tenant_id   TEXT,
    code_hash   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE UNIQUE INDEX mfa_recovery_codes_hash ON mfa_recovery_codes (user_id, code_hash);

-- The second step of a sign-in: an opaque token (hex SHA-256 stored), single use, short-lived,
-- dead after a few wrong codes.
CREATE TABLE mfa_challenges (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    tenant_id   TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    failures    BIGINT NOT NULL DEFAULT 0,
    ip          TEXT,
    user_agent  TEXT
);
CREATE INDEX mfa_challenges_user ON mfa_challenges (user_id);
