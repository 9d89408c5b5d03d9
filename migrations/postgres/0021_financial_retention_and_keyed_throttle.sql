-- Issue 14 item 11.
--
-- Financial records are kept at least five years: like transfers and entries, holds, accounts
-- and reversal legs can no longer be deleted (or truncated) at all (nothing in Kasho deletes
-- them; these triggers make sure nothing ever does). Updates stay allowed: balances and hold
-- states change.
CREATE FUNCTION kasho_never_deleted() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% are financial records and are never deleted', TG_TABLE_NAME;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds
    FOR EACH ROW EXECUTE FUNCTION kasho_never_deleted();
CREATE TRIGGER holds_no_truncate BEFORE TRUNCATE ON holds
    FOR EACH STATEMENT EXECUTE FUNCTION kasho_never_deleted();
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION kasho_never_deleted();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION kasho_never_deleted();
CREATE TRIGGER reversal_legs_no_delete BEFORE DELETE ON reversal_legs
    FOR EACH ROW EXECUTE FUNCTION kasho_never_deleted();
CREATE TRIGGER reversal_legs_no_truncate BEFORE TRUNCATE ON reversal_legs
    FOR EACH STATEMENT EXECUTE FUNCTION kasho_never_deleted();

-- Sign-in throttle records of accounts were keyed by an unkeyed SHA-256 of tenant and email,
-- which anyone holding the table could confirm by hashing a guess. They are now keyed by an
-- HMAC under a key derived from the master key, which SQL cannot compute: the old rows can
-- never be found again, so they are deleted rather than kept as a guessable list. Counts and
-- locks in progress start over once (at most one lockout period and one day of counts).
DELETE FROM login_throttle WHERE key LIKE 'acct:%';
