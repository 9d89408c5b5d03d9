-- API tokens (issue 5 item 7), their secrets (several during a rotation's overlap) and the
-- nonces of signed requests (item 8).

-- A token acts for the user who created it, within its scopes, in that user's tenant.
-- scopes: comma-separated `permission=own|all` (the creator's scope when it was created);
-- allowed_ips: comma-separated CIDRs, '' for any address.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    user_id       TEXT NOT NULL REFERENCES users (id),
    name          TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    allowed_ips   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    rotated_at    BIGINT,
    revoked_at    BIGINT,
    revoked_by    TEXT
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id, id);
CREATE INDEX api_tokens_user ON api_tokens (tenant_id, user_id, id);

-- The secrets of a token, as hex HMAC-SHA256 under a key derived from the master key (never
-- the secret itself). valid_until is NULL for the current secret and set, by a rotation, on
-- the one it replaces (the end of the overlap).
CREATE TABLE api_token_secrets (
    secret_hash  TEXT PRIMARY KEY,
    token_id     TEXT NOT NULL REFERENCES api_tokens (id),
    tenant_id    TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    valid_until  BIGINT
);
CREATE INDEX api_token_secrets_token ON api_token_secrets (token_id);

-- Nonces of signed requests, remembered until the request's timestamp leaves the tolerance
-- window; the primary key makes a second use fail on every instance.
CREATE TABLE request_nonces (
    token_id    TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (token_id, nonce)
);
CREATE INDEX request_nonces_expiry ON request_nonces (expires_at);
