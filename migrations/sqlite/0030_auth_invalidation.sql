-- Issue 15: the session cache's invalidation signal. Every change to what authenticates a
-- request (a session ended or altered, a user's status, roles or second factor, a tenant's
-- status, token lifetime or security policy, an API token or its secrets) bumps the one
-- counter below, inside the change's own transaction. Each instance reads the counter a few
-- times a second (service::session_cache) and forgets everything it cached when it moved, so
-- a second process on the same file (the tests' second instance, a CLI command) is heard
-- within the poll interval. Writes that change nothing a request is judged by (a session's
-- idle-timeout touch, an API token's last use, the tenant row lock) leave it alone.
CREATE TABLE auth_generation (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   BIGINT NOT NULL
);
INSERT INTO auth_generation (id, n) VALUES (1, 0);

CREATE TRIGGER sessions_auth_changed AFTER UPDATE ON sessions FOR EACH ROW
    WHEN OLD.revoked_at IS NOT NEW.revoked_at
      OR OLD.expires_at IS NOT NEW.expires_at
      OR OLD.authenticated_at IS NOT NEW.authenticated_at
      OR OLD.last_ip IS NOT NEW.last_ip
      OR OLD.ip IS NOT NEW.ip
      OR OLD.user_id IS NOT NEW.user_id
      OR OLD.tenant_id IS NOT NEW.tenant_id
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER sessions_auth_deleted AFTER DELETE ON sessions FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;

CREATE TRIGGER users_auth_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN OLD.status IS NOT NEW.status
      OR OLD.roles IS NOT NEW.roles
      OR OLD.mfa_enabled IS NOT NEW.mfa_enabled
      OR OLD.tenant_id IS NOT NEW.tenant_id
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER users_auth_deleted AFTER DELETE ON users FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;

CREATE TRIGGER tenants_auth_changed AFTER UPDATE ON tenants FOR EACH ROW
    WHEN OLD.status IS NOT NEW.status
      OR OLD.access_token_ttl_seconds IS NOT NEW.access_token_ttl_seconds
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER tenants_auth_deleted AFTER DELETE ON tenants FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;

CREATE TRIGGER tenant_security_auth_inserted AFTER INSERT ON tenant_security FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER tenant_security_auth_changed AFTER UPDATE ON tenant_security FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER tenant_security_auth_deleted AFTER DELETE ON tenant_security FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;

CREATE TRIGGER api_tokens_auth_changed AFTER UPDATE ON api_tokens FOR EACH ROW
    WHEN OLD.revoked_at IS NOT NEW.revoked_at
      OR OLD.expires_at IS NOT NEW.expires_at
      OR OLD.scopes IS NOT NEW.scopes
      OR OLD.allowed_ips IS NOT NEW.allowed_ips
      OR OLD.user_id IS NOT NEW.user_id
      OR OLD.tenant_id IS NOT NEW.tenant_id
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER api_tokens_auth_deleted AFTER DELETE ON api_tokens FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER api_token_secrets_auth_changed AFTER UPDATE ON api_token_secrets FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER api_token_secrets_auth_deleted AFTER DELETE ON api_token_secrets FOR EACH ROW
BEGIN
    UPDATE auth_generation SET n = n + 1 WHERE id = 1;
END;
