-- Foundation: tenants, users, sessions, refresh tokens and the hash-chained audit log.
-- Timestamps are BIGINT microseconds since the Unix epoch (UTC) on both backends.

CREATE TABLE tenants (
    id                        TEXT PRIMARY KEY,
    slug                      TEXT NOT NULL UNIQUE,
    name                      TEXT NOT NULL,
    currencies                TEXT NOT NULL,
    status                    TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    access_token_ttl_seconds  BIGINT,
    created_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT REFERENCES tenants (id),
    email          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    roles          TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
-- One account per email per tenant; platform admins (tenant_id NULL) share the '' scope.
CREATE UNIQUE INDEX users_tenant_email ON users (COALESCE(tenant_id, ''), email);
CREATE INDEX users_tenant_id ON users (tenant_id, id);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT REFERENCES tenants (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    revoked_reason  TEXT,
    ip              TEXT,
    user_agent      TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_tenant ON sessions (tenant_id);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    tenant_id   TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE audit_heads (
    chain  TEXT PRIMARY KEY,
    seq    BIGINT NOT NULL,
    hash   TEXT NOT NULL
);

CREATE TABLE audit_events (
    id           TEXT PRIMARY KEY,
    chain        TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    tenant_id    TEXT,
    occurred_at  BIGINT NOT NULL,
    actor_type   TEXT NOT NULL,
    actor_id     TEXT,
    action       TEXT NOT NULL,
    target_type  TEXT,
    target_id    TEXT,
    outcome      TEXT NOT NULL,
    reason       TEXT,
    ip           TEXT,
    request_id   TEXT,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX audit_events_chain_time ON audit_events (chain, occurred_at);
CREATE INDEX audit_events_chain_actor ON audit_events (chain, actor_id);
