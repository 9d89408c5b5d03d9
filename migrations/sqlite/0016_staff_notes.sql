-- Staff reasons as codes, and sealed staff-only notes (issue 13, item 8: tipping off).
--
-- A staff action that carries a reason (account freeze, unfreeze and close; restriction of
-- processing and its lifting; KYC approval and rejection) records a code from a fixed list in
-- its audit record. Free text a staff member adds goes here, sealed under the tenant's data
-- key (AAD row = the note id), never into the audit chain: the chain carries the code and the
-- note's id only. Notes are readable only with `staff_notes:read` (COMPLIANCE_OFFICER), each
-- read audited. They are append-only; only `note` may be rewritten (re-encryption under a new
-- key version).
CREATE TABLE staff_notes (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    -- What the action was about: `account`, `customer` or `kyc_submission`, and its id.
    target_type  TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    -- The audit action the note belongs to (e.g. `account.freeze`) and its reason code.
    action       TEXT NOT NULL,
    reason_code  TEXT NOT NULL,
    note         TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX staff_notes_target ON staff_notes (tenant_id, target_id, id);

CREATE TRIGGER staff_notes_immutable BEFORE UPDATE OF id, tenant_id, target_type, target_id, action, reason_code, created_by, created_at ON staff_notes
BEGIN SELECT RAISE(ABORT, 'staff_notes are append-only'); END;
CREATE TRIGGER staff_notes_no_delete BEFORE DELETE ON staff_notes
BEGIN SELECT RAISE(ABORT, 'staff_notes are append-only'); END;

-- A KYC decision now carries the staff's reason code, the code the customer is shown, and
-- the id of its staff note. Decisions made before keep their sealed free-text `reason` (shown
-- to staff holding `staff_notes:read` only) and have none of the three.
ALTER TABLE kyc_decisions ADD COLUMN reason_code TEXT;
ALTER TABLE kyc_decisions ADD COLUMN customer_code TEXT;
ALTER TABLE kyc_decisions ADD COLUMN note_id TEXT;
CREATE TRIGGER kyc_decisions_codes_immutable BEFORE UPDATE OF reason_code, customer_code, note_id ON kyc_decisions
BEGIN SELECT RAISE(ABORT, 'kyc_decisions are append-only'); END;
