-- Issue 13: the per-credential budget of refused money movements (a client cannot flood the
-- audit chain by failing). One row per credential and window; older windows are dropped when
-- the credential's next refusal is counted.
CREATE TABLE refusal_budgets (
    tenant_id    TEXT   NOT NULL REFERENCES tenants (id),
    credential   TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    refused      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, credential, window_start)
);
