-- CORS (issue 6 item 4): the browser origins each tenant allows, one row per (tenant, origin),
-- rewritten from the tenant's security policy whenever it is saved. A preflight carries no
-- credential, so it is answered when the origin is on ANY tenant's list: the index on origin
-- makes that look-up one probe.
CREATE TABLE tenant_cors_origins (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    origin     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, origin)
);
CREATE INDEX tenant_cors_origins_origin ON tenant_cors_origins (origin);
