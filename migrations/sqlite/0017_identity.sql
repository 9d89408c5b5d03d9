-- Invitations, break-glass restoration of a tenant's administration, and what segregation of
-- duties looks up (docs/SECURITY.md, "Invitations and segregation of duties").

-- A user created by an invitation has no password of its own until it accepts: status
-- 'invited'. SQLite cannot alter a CHECK constraint, and rebuilding `users` (referenced by
-- eight tables, extended by later migrations) would have to name every column. The constraint
-- is only widened, which every stored row already satisfies, so the table's stored definition
-- is edited in place (the documented procedure for changes that do not touch stored content,
-- https://www.sqlite.org/lang_altertable.html#otheralter). `RESET` reloads this connection's
-- schema; the CREATE TABLE below bumps the schema cookie, so every other connection reloads it
-- before its next statement.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
   SET sql = replace(sql, 'CHECK (status IN (''active'', ''disabled''))',
                          'CHECK (status IN (''active'', ''disabled'', ''invited''))')
 WHERE type = 'table' AND name = 'users';
PRAGMA writable_schema = RESET;

-- One row per invitation link sent (or issued at the console). Only the SHA-256 digest of the
-- token is stored (the token exists only in the link). A link is live while accepted_at and
-- invalidated_at are NULL and expires_at is in the future; a newer link for the same user
-- invalidates the older ones; accepting spends it with a conditional UPDATE in the
-- transaction that sets the password and activates the user.
-- issued_by_type: user (a manager inviting), platform_admin (a tenant's first manager),
-- break_glass (the approved restoration), console (`kasho admin invitation-link`).
CREATE TABLE user_invitations (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    token_hash      TEXT NOT NULL UNIQUE,
    issued_by_type  TEXT NOT NULL,
    issued_by       TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    accepted_at     BIGINT,
    invalidated_at  BIGINT
);
CREATE INDEX user_invitations_user ON user_invitations (user_id, created_at);

-- Break-glass: a platform admin asks for an invitation of a new MANAGER for a tenant, and a
-- second platform admin approves it within 24 hours. The database itself refuses an approval
-- by the requester.
CREATE TABLE break_glass_requests (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    email         TEXT NOT NULL,
    requested_by  TEXT NOT NULL REFERENCES users (id),
    requested_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'approved')),
    approved_by   TEXT REFERENCES users (id),
    approved_at   BIGINT,
    user_id       TEXT REFERENCES users (id),
    CHECK (approved_by IS NULL OR approved_by <> requested_by)
);
CREATE INDEX break_glass_requests_tenant ON break_glass_requests (tenant_id, id);

-- Segregation of duties asks "did this user invite, or grant roles to, that one recently?":
-- the audit records about a user, by chain and target.
CREATE INDEX audit_events_user_target ON audit_events (chain, target_id, occurred_at)
    WHERE target_type = 'user';
