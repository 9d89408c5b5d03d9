-- Issue 14 item 11.
--
-- Financial records are kept at least five years: like transfers and entries, holds, accounts
-- and reversal legs can no longer be deleted at all (nothing in Kasho deletes them; these
-- triggers make sure nothing ever does).
CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds
BEGIN SELECT RAISE(ABORT, 'holds are financial records and are never deleted'); END;
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
BEGIN SELECT RAISE(ABORT, 'accounts are financial records and are never deleted'); END;
CREATE TRIGGER reversal_legs_no_delete BEFORE DELETE ON reversal_legs
BEGIN SELECT RAISE(ABORT, 'reversal legs are financial records and are never deleted'); END;

-- Sign-in throttle records of accounts were keyed by an unkeyed SHA-256 of tenant and email,
-- which anyone holding the table could confirm by hashing a guess. They are now keyed by an
-- HMAC under a key derived from the master key, which SQL cannot compute: the old rows can
-- never be found again, so they are deleted rather than kept as a guessable list. Counts and
-- locks in progress start over once (at most one lockout period and one day of counts).
DELETE FROM login_throttle WHERE key LIKE 'acct:%';
