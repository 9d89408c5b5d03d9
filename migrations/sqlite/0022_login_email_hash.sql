-- Issue 14 item 5: a customer's login keeps no readable email.
--
-- `email_hash` is the keyed hash (HMAC-SHA256 under `login-email/v1`, derived from the root
-- key, over the tenant id and the normalised email) by which sign-in, password reset,
-- invitations and mail delivery look a login up, and which keeps an email unique per tenant.
-- For a login holding only the CUSTOMER role, `email` then holds the address sealed under the
-- login's own data key (`login:<user id>`, destroyed by the customer's erasure); staff logins
-- keep it in clear. SQL cannot compute the hash: rows written before this are hashed (and a
-- customer's login sealed) at start-up (`service::users::seal_login_emails`); until then a
-- lookup also matches the clear email of a row without a hash.
ALTER TABLE users ADD COLUMN email_hash TEXT;
CREATE UNIQUE INDEX users_tenant_email_hash ON users (COALESCE(tenant_id, ''), email_hash);
