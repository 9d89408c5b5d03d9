-- Request signing with a secret of its own (issue 13 item 15). Each API-token secret row gets
-- the signing secret issued with it, sealed under the tenant's data key (AAD row = the row's
-- secret_hash; registered in ENCRYPTED_COLUMNS, so tenant key rotation re-encrypts it). An
-- HMAC is checked by recomputing it, so the key must be recoverable: a hash would not do.
-- NULL on rows created before this migration: those tokens keep signing with the bearer
-- secret until their next rotation, which issues a signing secret.
ALTER TABLE api_token_secrets ADD COLUMN signing_secret TEXT;
