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

CREATE FUNCTION kasho_staff_note_immutable() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (to_jsonb(NEW) - 'note') IS DISTINCT FROM (to_jsonb(OLD) - 'note') THEN
        RAISE EXCEPTION 'staff_notes are append-only';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER staff_notes_append_only BEFORE UPDATE OR DELETE ON staff_notes
    FOR EACH ROW EXECUTE FUNCTION kasho_staff_note_immutable();
CREATE TRIGGER staff_notes_no_truncate BEFORE TRUNCATE ON staff_notes
    FOR EACH STATEMENT EXECUTE FUNCTION kasho_append_only();

-- A KYC decision now carries the staff's reason code, the code the customer is shown, and
-- the id of its staff note. Decisions made before keep their sealed free-text `reason` (shown
-- to staff holding `staff_notes:read` only) and have none of the three. The existing trigger
-- (everything but `reason` is immutable) covers the new columns.
ALTER TABLE kyc_decisions ADD COLUMN reason_code TEXT;
ALTER TABLE kyc_decisions ADD COLUMN customer_code TEXT;
ALTER TABLE kyc_decisions ADD COLUMN note_id TEXT;
