-- Set-based posting and the rest of the ledger issue:
-- * reversals are tracked per leg, so a transfer with several credit legs can be reversed
--   (each leg gives back at most what it received);
-- * a hold may name the account a capture will credit, which shows the amount as pending credits;
-- * the indexes the batch writer's look-ups need (expiring holds across accounts).

CREATE TABLE reversal_legs (
    transfer_id  TEXT NOT NULL REFERENCES transfers (id),
    account_id   TEXT NOT NULL REFERENCES accounts (id),
    reversed     BIGINT NOT NULL CHECK (reversed >= 0),
    PRIMARY KEY (transfer_id, account_id)
);
-- Until now only transfers with one credit leg could be reversed: that leg took it all.
INSERT INTO reversal_legs (transfer_id, account_id, reversed)
SELECT r.transfer_id, e.account_id, r.reversed
FROM reversal_totals r JOIN entries e ON e.transfer_id = r.transfer_id AND e.direction = 'credit';
DROP TABLE reversal_totals;

ALTER TABLE holds ADD COLUMN credit_account_id TEXT REFERENCES accounts (id);
CREATE INDEX holds_active_expiry ON holds (status, expires_at);
CREATE INDEX holds_credit_active ON holds (credit_account_id, status, expires_at);

-- No query reads transfers by their debit account (account filters go through entries), and on
-- the hot path every index costs a page write per commit.
DROP INDEX transfers_debit;
