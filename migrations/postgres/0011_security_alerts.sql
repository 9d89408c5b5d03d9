-- The security-alert outbox: one row per security event at or above `alert_min_severity`,
-- written in the transaction that appends the event's audit record (so an event is never
-- recorded without its alert), while a webhook is configured.
--
-- `payload` is the JSON body the webhook receives, fixed when the event is recorded (ids,
-- type, severity, time, address, request id, and codes; never emails, names or secrets), so
-- every attempt sends the same bytes under a fresh signature.
-- status: pending -> sending (claimed until lease_until) -> delivered | pending (retry) | failed.
-- last_error holds an HTTP status or a network error class, never the receiver's text.
-- No foreign key to audit_events: retention prunes the audit trail on its own schedule.
CREATE TABLE security_alerts (
    id               TEXT PRIMARY KEY,
    audit_event_id   TEXT NOT NULL,
    tenant_id        TEXT,
    event_type       TEXT NOT NULL,
    severity         TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_until      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX security_alerts_due ON security_alerts (status, next_attempt_at);
CREATE INDEX security_alerts_finished ON security_alerts (status, finished_at);
