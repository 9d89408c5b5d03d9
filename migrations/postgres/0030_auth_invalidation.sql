-- Issue 15: the session cache's invalidation channel. Every change to what authenticates a
-- request (a session ended or altered, a user's status, roles or second factor, a tenant's
-- status, token lifetime or security policy, an API token or its secrets) announces itself on
-- the `kasho_auth_<schema>` channel (the schema of the changed table, so deployments or test
-- schemas sharing a database do not hear each other) with the id it concerns ('s:' session, 'u:' user, 't:' tenant, 'k:'
-- API token, '*' everything). The trigger runs inside the change's own transaction, so
-- PostgreSQL delivers the notification only if and when the change commits. Every instance
-- listens (service::session_cache) and drops what it cached about that id. Writes that change
-- nothing a request is judged by (a session's idle-timeout touch, an API token's last use, the
-- tenant row locked by `UPDATE tenants SET updated_at = updated_at`) announce nothing.

CREATE FUNCTION kasho_auth_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, 's:' || OLD.id);
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_auth_changed AFTER UPDATE ON sessions FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
       OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
       OR OLD.authenticated_at IS DISTINCT FROM NEW.authenticated_at
       OR OLD.last_ip IS DISTINCT FROM NEW.last_ip
       OR OLD.ip IS DISTINCT FROM NEW.ip
       OR OLD.user_id IS DISTINCT FROM NEW.user_id
       OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION kasho_auth_session_changed();

-- Deleting sessions (the retention purge, many rows at once): one notification for all, when
-- a row was deleted at all.
CREATE FUNCTION kasho_auth_sessions_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM gone) THEN
        PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, '*');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sessions_auth_deleted AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION kasho_auth_sessions_deleted();

CREATE FUNCTION kasho_auth_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, 'u:' || OLD.id);
    RETURN NULL;
END $$;
CREATE TRIGGER users_auth_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
       OR OLD.roles IS DISTINCT FROM NEW.roles
       OR OLD.mfa_enabled IS DISTINCT FROM NEW.mfa_enabled
       OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION kasho_auth_user_changed();
CREATE TRIGGER users_auth_deleted AFTER DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION kasho_auth_user_changed();

CREATE FUNCTION kasho_auth_tenant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, 't:' || OLD.id);
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_auth_changed AFTER UPDATE ON tenants FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
       OR OLD.access_token_ttl_seconds IS DISTINCT FROM NEW.access_token_ttl_seconds)
    EXECUTE FUNCTION kasho_auth_tenant_changed();
CREATE TRIGGER tenants_auth_deleted AFTER DELETE ON tenants FOR EACH ROW
    EXECUTE FUNCTION kasho_auth_tenant_changed();

-- A tenant's security policy (allow-list, MFA requirement, session lifetimes): any write.
CREATE FUNCTION kasho_auth_policy_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, 't:' || OLD.tenant_id);
    ELSE
        PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, 't:' || NEW.tenant_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tenant_security_auth_changed AFTER INSERT OR UPDATE OR DELETE ON tenant_security
    FOR EACH ROW EXECUTE FUNCTION kasho_auth_policy_changed();

CREATE FUNCTION kasho_auth_api_token_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, 'k:' || OLD.id);
    RETURN NULL;
END $$;
CREATE TRIGGER api_tokens_auth_changed AFTER UPDATE ON api_tokens FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
       OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
       OR OLD.scopes IS DISTINCT FROM NEW.scopes
       OR OLD.allowed_ips IS DISTINCT FROM NEW.allowed_ips
       OR OLD.user_id IS DISTINCT FROM NEW.user_id
       OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION kasho_auth_api_token_changed();
CREATE TRIGGER api_tokens_auth_deleted AFTER DELETE ON api_tokens FOR EACH ROW
    EXECUTE FUNCTION kasho_auth_api_token_changed();

-- A rotation ends the replaced secret's validity (`valid_until`).
CREATE FUNCTION kasho_auth_api_token_secret_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kasho_auth_' || TG_TABLE_SCHEMA, 'k:' || OLD.token_id);
    RETURN NULL;
END $$;
CREATE TRIGGER api_token_secrets_auth_changed AFTER UPDATE OR DELETE ON api_token_secrets
    FOR EACH ROW EXECUTE FUNCTION kasho_auth_api_token_secret_changed();

-- SQLite's invalidation signal is a generation counter in this table (polled, since SQLite has
-- no notifications). PostgreSQL notifies instead and never writes it; it exists so both
-- backends have the same tables (the records of processing list tables, not backends).
CREATE TABLE auth_generation (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   BIGINT NOT NULL
);
INSERT INTO auth_generation (id, n) VALUES (1, 0);
