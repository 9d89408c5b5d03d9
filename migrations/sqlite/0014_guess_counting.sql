-- Issue 13 items 5 and 11: credential guesses counted before they are checked, and the staff
-- address allow-list applied to every request.
--
-- login_throttle.failures now counts the guesses taken in the current run (those being checked
-- and those that failed): a guess is counted by one conditional upsert BEFORE the password or
-- code is checked, and a right one gives its count back. next_attempt_at carries the
-- progressive delay, set by the same upsert (microseconds; NULL: no delay).
ALTER TABLE login_throttle ADD COLUMN next_attempt_at BIGINT;

-- The client address a session was last used from (as `trusted_proxies` resolves it);
-- NULL: not used since sign-in (the sign-in address, `ip`, applies). Narrowing a tenant's
-- staff allow-list ends the sessions whose last address it no longer admits.
ALTER TABLE sessions ADD COLUMN last_ip TEXT;
