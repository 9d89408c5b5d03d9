-- KYC tiers, limits and verification (issue 4, item 5).
--
-- Every customer has a tier (0 to 3). A tenant configures limits per tier and currency; a
-- currency with no row at all is unconfigured (no KYC limit applies to it), and once a
-- currency has any row, a tier without one may not send or receive in it (fail closed).
-- Verification: a submission asks for a tier and carries documents (sealed under the
-- customer's data key); a COMPLIANCE_OFFICER decides it once. Documents and decisions are
-- append-only; a submission's status moves once from `submitted` to its decision.

ALTER TABLE customers ADD COLUMN kyc_tier BIGINT NOT NULL DEFAULT 0 CHECK (kyc_tier BETWEEN 0 AND 3);

-- NULL in a figure means "no limit" for that figure.
CREATE TABLE kyc_limits (
    tenant_id            TEXT NOT NULL REFERENCES tenants (id),
    tier                 BIGINT NOT NULL CHECK (tier BETWEEN 0 AND 3),
    currency             TEXT NOT NULL,
    max_single_transfer  BIGINT CHECK (max_single_transfer >= 0),
    daily_outgoing       BIGINT CHECK (daily_outgoing >= 0),
    monthly_outgoing     BIGINT CHECK (monthly_outgoing >= 0),
    max_balance          BIGINT CHECK (max_balance >= 0),
    updated_by           TEXT NOT NULL,
    updated_at           BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, currency, tier)
);

CREATE TABLE kyc_submissions (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    customer_id     TEXT NOT NULL REFERENCES customers (id),
    requested_tier  BIGINT NOT NULL CHECK (requested_tier BETWEEN 1 AND 3),
    -- The customer's tier when it submitted.
    tier_at_submission BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('submitted', 'approved', 'rejected')),
    submitted_by    TEXT NOT NULL,
    submitted_at    BIGINT NOT NULL
);
CREATE INDEX kyc_submissions_tenant_status ON kyc_submissions (tenant_id, status, id);
CREATE INDEX kyc_submissions_customer ON kyc_submissions (tenant_id, customer_id, id);
-- At most one open submission per customer.
CREATE UNIQUE INDEX kyc_submissions_one_open ON kyc_submissions (tenant_id, customer_id) WHERE status = 'submitted';

-- One decision per submission (the primary key makes a second one impossible).
CREATE TABLE kyc_decisions (
    submission_id  TEXT PRIMARY KEY REFERENCES kyc_submissions (id),
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    customer_id    TEXT NOT NULL REFERENCES customers (id),
    decision       TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
    tier_before    BIGINT NOT NULL,
    tier_after     BIGINT NOT NULL,
    -- The approval's note or the rejection's reason: free text that may describe the person,
    -- sealed under the customer's data key (AAD row = submission id).
    reason         TEXT,
    decided_by     TEXT NOT NULL,
    decided_at     BIGINT NOT NULL
);
CREATE INDEX kyc_decisions_customer ON kyc_decisions (tenant_id, customer_id);

-- `content` is one ciphertext under the customer's data key (AAD row = document id); only it
-- may be rewritten (re-encryption under a new key version).
CREATE TABLE kyc_documents (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    submission_id  TEXT NOT NULL REFERENCES kyc_submissions (id),
    customer_id    TEXT NOT NULL REFERENCES customers (id),
    document_type  TEXT NOT NULL CHECK (document_type IN ('passport', 'national_id', 'drivers_licence', 'proof_of_address', 'selfie')),
    content_type   TEXT NOT NULL CHECK (content_type IN ('application/pdf', 'image/png', 'image/jpeg')),
    size_bytes     BIGINT NOT NULL CHECK (size_bytes > 0),
    sha256         TEXT NOT NULL,
    content        TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX kyc_documents_submission ON kyc_documents (tenant_id, submission_id);

-- No new index on entries: the KYC check's totals read the account's entries from the first
-- one of the month on, by the existing unique (account_id, account_seq) index (an index on
-- created_at would cost every posting a random B-tree insert).

-- Only the sealed reason may be rewritten (re-encryption under a new key version).
CREATE FUNCTION kasho_kyc_decision_immutable() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (to_jsonb(NEW) - 'reason') IS DISTINCT FROM (to_jsonb(OLD) - 'reason') THEN
        RAISE EXCEPTION 'kyc_decisions are append-only';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER kyc_decisions_append_only BEFORE UPDATE OR DELETE ON kyc_decisions
    FOR EACH ROW EXECUTE FUNCTION kasho_kyc_decision_immutable();
CREATE TRIGGER kyc_decisions_no_truncate BEFORE TRUNCATE ON kyc_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION kasho_append_only();

CREATE FUNCTION kasho_kyc_document_immutable() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (to_jsonb(NEW) - 'content') IS DISTINCT FROM (to_jsonb(OLD) - 'content') THEN
        RAISE EXCEPTION 'kyc_documents are append-only';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER kyc_documents_immutable BEFORE UPDATE OR DELETE ON kyc_documents
    FOR EACH ROW EXECUTE FUNCTION kasho_kyc_document_immutable();

-- A submission's status moves once, from `submitted`; nothing else of it changes.
CREATE FUNCTION kasho_kyc_submission_transition() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.status <> 'submitted'
       OR (to_jsonb(NEW) - 'status') IS DISTINCT FROM (to_jsonb(OLD) - 'status') THEN
        RAISE EXCEPTION 'a decided kyc submission cannot change';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER kyc_submissions_one_transition BEFORE UPDATE OR DELETE ON kyc_submissions
    FOR EACH ROW EXECUTE FUNCTION kasho_kyc_submission_transition();
CREATE TRIGGER kyc_documents_no_truncate BEFORE TRUNCATE ON kyc_documents
    FOR EACH STATEMENT EXECUTE FUNCTION kasho_append_only();
CREATE TRIGGER kyc_submissions_no_truncate BEFORE TRUNCATE ON kyc_submissions
    FOR EACH STATEMENT EXECUTE FUNCTION kasho_append_only();
