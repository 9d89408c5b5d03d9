//! Storage of the key hierarchy: master key versions, data keys, and the registry of encrypted
//! columns that rotation walks. Implemented once for both backends (any
//! [`SqlStore`]), like the rest of the store.
//!
//! Nothing here sees a key in the clear: rows hold keys wrapped by the level above
//! (`service::keys` does the unwrapping).

use async_trait::async_trait;

use sqlx::Transaction;

use super::backend::{Backend, RowsAffected, SqlStore, for_share};
use super::{StoreError, StoreResult, customers};
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;

/// A master key-encryption key version.
#[derive(Clone, sqlx::FromRow)]
pub struct MasterKeyRecord {
    pub version: i64,
    /// Which root key wrapped it (a fingerprint, not the key).
    pub root_id: String,
    /// The KEK sealed by the root key; `None` once retired.
    pub wrapped: Option<String>,
    /// `active` (wraps new data keys), `retiring` (being replaced), `retired`.
    pub status: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for MasterKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeyRecord")
            .field("version", &self.version)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A data-encryption key version.
#[derive(Clone, sqlx::FromRow)]
pub struct DataKeyRecord {
    pub id: String,
    pub version: i64,
    pub tenant_id: String,
    /// `tenant`, `index` or `customer:<customer id>`.
    pub owner: String,
    pub kek_version: i64,
    /// The DEK sealed by master key version `kek_version`; `None` once retired or destroyed.
    pub wrapped: Option<String>,
    /// `active`, `spent` (budget used up; opens, never seals), `retiring` (being re-encrypted
    /// away from), `retired`, `destroyed`.
    pub status: String,
    /// Encryptions reserved under this version (rotated well before 2^32).
    pub encryptions: i64,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for DataKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyRecord")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("owner", &self.owner)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What a database was initialised with (the `root_key_check` row): public fingerprints only.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RootKeyCheck {
    /// [`crate::crypto::keys::MasterKey::root_id`] of the root key.
    pub root_id: String,
    /// [`crate::crypto::keys::MasterKey::check_value`] of the root key.
    pub check_value: String,
    /// The `kid` of the JWT signing key ([`crate::crypto::jwt::key_id`]).
    pub jwt_kid: String,
    pub created_at: i64,
}

/// A customer whose blind-index rows were computed under an older index version than the one
/// a rotation is moving to.
#[derive(Clone, sqlx::FromRow)]
pub struct Unindexed {
    pub id: String,
    /// The sealed profile, for the compare-and-swap of the re-indexing write.
    pub pii: String,
}

impl std::fmt::Debug for Unindexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unindexed")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A column that holds ciphertexts, as rotation and the at-rest tests see it. `row` is the SQL
/// expression giving the AAD row of a value (the same one the code seals it with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptedColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub row: &'static str,
}

impl EncryptedColumn {
    /// The AAD context of this column's value in `row` of `tenant`.
    pub fn at<'a>(&self, tenant: &'a str, row: &'a str) -> crate::crypto::envelope::Context<'a> {
        crate::crypto::envelope::Context {
            tenant,
            table: self.table,
            column: self.column,
            row,
        }
    }
}

/// Every encrypted column. Rotation re-encrypts each one; adding a column here is how new
/// encrypted data joins rotation.
pub const ENCRYPTED_COLUMNS: &[EncryptedColumn] = &[
    TRANSFER_DETAILS,
    IDEMPOTENCY_RESPONSES,
    CUSTOMER_PII,
    CUSTOMER_EXTERNAL_REF,
    KYC_DOCUMENT_CONTENT,
    KYC_DECISION_REASON,
    MFA_TOTP_SECRET,
    MFA_TOTP_PENDING_SECRET,
    MAIL_OUTBOX_MESSAGE,
    API_TOKEN_SIGNING_SECRET,
    STAFF_NOTE,
    SESSION_IP,
    SESSION_USER_AGENT,
    USER_EMAIL,
];

/// A customer's login email, sealed under the login's own data key (`login:<user id>`, AAD row
/// = the user id), destroyed by the customer's erasure; staff logins keep it in clear. Looked
/// up and kept unique by `users.email_hash` (a keyed hash), never by this value.
pub const USER_EMAIL: EncryptedColumn = EncryptedColumn {
    table: "users",
    column: "email",
    row: "id",
};

/// The sign-in address of a customer's session, sealed under the customer's data key (AAD row =
/// the session id); staff sessions keep it in clear (the staff allow-list reads it).
pub const SESSION_IP: EncryptedColumn = EncryptedColumn {
    table: "sessions",
    column: "ip",
    row: "id",
};

/// The user agent of a customer's session, sealed like [`SESSION_IP`].
pub const SESSION_USER_AGENT: EncryptedColumn = EncryptedColumn {
    table: "sessions",
    column: "user_agent",
    row: "id",
};

pub const TRANSFER_DETAILS: EncryptedColumn = EncryptedColumn {
    table: "transfers",
    column: "details",
    row: "id",
};

pub const IDEMPOTENCY_RESPONSES: EncryptedColumn = EncryptedColumn {
    table: "idempotency_keys",
    column: "response_body",
    row: "principal_id || '/' || idem_key",
};

pub const CUSTOMER_PII: EncryptedColumn = EncryptedColumn {
    table: "customers",
    column: "pii",
    row: "id",
};

/// A customer's external reference (the integrator's own id for it, which can name the person
/// in the integrator's systems), sealed under the customer's data key (AAD row = the customer
/// id) so that erasure shreds it in every copy of the database. Values written before issue 14
/// are sealed at start-up (`service::privacy::seal_legacy_identifiers`).
pub const CUSTOMER_EXTERNAL_REF: EncryptedColumn = EncryptedColumn {
    table: "customers",
    column: "external_ref",
    row: "id",
};

/// KYC identity documents, each sealed under its customer's data key (AAD row = document id).
pub const KYC_DOCUMENT_CONTENT: EncryptedColumn = EncryptedColumn {
    table: "kyc_documents",
    column: "content",
    row: "id",
};

/// A KYC decision's note or reason, sealed under the customer's data key (AAD row = the
/// submission id, the decision's primary key).
pub const KYC_DECISION_REASON: EncryptedColumn = EncryptedColumn {
    table: "kyc_decisions",
    column: "reason",
    row: "submission_id",
};

/// A user's active TOTP secret, sealed under the tenant's data key (AAD row = user id). A
/// platform admin's (no tenant) is sealed under the platform key instead
/// ([`crate::service::keys::Keyring::seal_platform`]); rotation scans by tenant, so it never
/// meets those rows.
pub const MFA_TOTP_SECRET: EncryptedColumn = EncryptedColumn {
    table: "mfa_totp",
    column: "secret",
    row: "user_id",
};

/// A TOTP secret awaiting its first code (sealed like [`MFA_TOTP_SECRET`]).
pub const MFA_TOTP_PENDING_SECRET: EncryptedColumn = EncryptedColumn {
    table: "mfa_totp",
    column: "pending_secret",
    row: "user_id",
};

/// An outgoing email (recipient and text, which may carry a reset link), sealed under the
/// tenant's data key until it is sent (AAD row = the message id).
pub const MAIL_OUTBOX_MESSAGE: EncryptedColumn = EncryptedColumn {
    table: "mail_outbox",
    column: "message",
    row: "id",
};

/// The signing secret issued with an API-token secret (request signing), sealed under the
/// tenant's data key (AAD row = that secret's hash, the row's primary key). An HMAC is checked
/// by recomputing it, so unlike the bearer secret it must be stored recoverably.
pub const API_TOKEN_SIGNING_SECRET: EncryptedColumn = EncryptedColumn {
    table: "api_token_secrets",
    column: "signing_secret",
    row: "secret_hash",
};

/// A staff-only note, sealed under the tenant's data key (AAD row = the note id). Under the
/// tenant's key, not the customer's: notes about suspicions are records the tenant must keep
/// (AML) even when the customer's personal data is erased.
pub const STAFF_NOTE: EncryptedColumn = EncryptedColumn {
    table: "staff_notes",
    column: "note",
    row: "id",
};

/// One stored ciphertext (or legacy plaintext) found by a rotation scan.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EncryptedValue {
    /// The AAD row (also how the value is addressed for its rewrite).
    pub row_key: String,
    pub stored: String,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn master_keys(&self) -> StoreResult<Vec<MasterKeyRecord>>;
    /// Adds a master key version; when `retire_active` is set the current active version
    /// becomes `retiring` in the same transaction. `Conflict` if the version exists.
    async fn add_master_key(
        &self,
        key: &MasterKeyRecord,
        retire_active: bool,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    /// Marks a `retiring` master key version `retired`, if no data key is wrapped by it any
    /// more. Returns whether it did. Its key material goes later ([`KeyStore::purge_data_key`]).
    async fn retire_master_key(
        &self,
        version: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;

    async fn data_key(&self, id: &str, version: i64) -> StoreResult<Option<DataKeyRecord>>;
    /// The owner's newest version in any status (to tell "never had a key" from "destroyed").
    async fn latest_data_key(
        &self,
        tenant: &str,
        owner: &str,
    ) -> StoreResult<Option<DataKeyRecord>>;
    /// Inserts a data key version. With `replace` (a rotation), the owner's active version
    /// `key.version - 1` takes that status (`retiring` or `spent`) in the same transaction;
    /// `Ok(false)` if it is no longer the active one (another process rotated first).
    /// `Conflict` if an active version already exists for a first key.
    async fn insert_data_key(
        &self,
        key: &DataKeyRecord,
        replace: Option<&'static str>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// Reserves `n` encryptions under an active version: the new total, or `None` if the
    /// version is no longer active.
    async fn reserve_encryptions(&self, id: &str, version: i64, n: i64)
    -> StoreResult<Option<i64>>;
    async fn data_keys_with_status(
        &self,
        status: &str,
        limit: i64,
    ) -> StoreResult<Vec<DataKeyRecord>>;
    /// Data keys (with key material) wrapped by another master key version than `kek_version`.
    async fn data_keys_not_under(
        &self,
        kek_version: i64,
        limit: i64,
    ) -> StoreResult<Vec<DataKeyRecord>>;
    /// Replaces a data key's wrapping if it is still wrapped by `old_kek`.
    async fn rewrap_data_key(
        &self,
        id: &str,
        version: i64,
        old_kek: i64,
        new_kek: i64,
        wrapped: &str,
    ) -> StoreResult<bool>;
    /// `retiring` (or `spent`) → `retired`. Its key material goes later
    /// ([`KeyStore::purge_retired_masters`]), so a read that fetched a ciphertext just before its
    /// re-encryption still opens it.
    async fn retire_data_key(
        &self,
        id: &str,
        version: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;

    /// Data key versions retired at or before `before` that still hold key material.
    async fn retired_data_keys(&self, before: Timestamp) -> StoreResult<Vec<DataKeyRecord>>;
    /// Drops a retired data key version's material.
    async fn purge_data_key(&self, id: &str, version: i64) -> StoreResult<bool>;
    /// A retired version found still sealing a value goes back to `retiring`.
    async fn reopen_data_key(&self, id: &str, version: i64) -> StoreResult<bool>;
    /// Drops the material of master key versions retired at or before `before` that no data
    /// key is wrapped by; returns how many.
    async fn purge_retired_masters(&self, before: Timestamp) -> StoreResult<u64>;

    /// Values of `col` in `tenant` whose text starts with `prefix` (or, with `None`, that are
    /// not ciphertexts at all: legacy plaintext), in row order after `after`.
    async fn encrypted_values(
        &self,
        col: EncryptedColumn,
        tenant: &str,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<EncryptedValue>>;
    /// Rewrites one value if it still holds `old` (a concurrent rewrite wins).
    async fn replace_encrypted(
        &self,
        col: EncryptedColumn,
        tenant: &str,
        row: &str,
        old: &str,
        new: &str,
    ) -> StoreResult<bool>;
    /// How many values of `col` start with `prefix` (anywhere).
    async fn count_encrypted(&self, col: EncryptedColumn, prefix: &str) -> StoreResult<i64>;

    // ------------------------------------------------------------ the root key proof

    /// Whether the schema has `table` (a database not migrated yet has none of them).
    async fn table_exists(&self, table: &str) -> StoreResult<bool>;
    /// The `root_key_check` row, if the table exists and the row was written.
    async fn root_key_check(&self) -> StoreResult<Option<RootKeyCheck>>;
    /// Writes the `root_key_check` row unless one exists; returns the row now stored (another
    /// process's, if it won the race).
    async fn record_root_key_check(&self, check: &RootKeyCheck) -> StoreResult<RootKeyCheck>;
    /// Replaces the recorded JWT key id (`kasho keys adopt-jwt-key`), with its audit record.
    async fn adopt_jwt_kid(&self, kid: &str, audit: &[NewAuditEvent]) -> StoreResult<bool>;
    /// Whether the database holds anything sealed by a root key: a check row, a master key
    /// version or an audit record. Tolerates a database without tables (nothing held).
    async fn holds_keys(&self) -> StoreResult<bool>;

    // ------------------------------------------------------------ blind-index keys

    /// The tenant's live index key versions (`active`, and `spent` ones not yet retired by an
    /// index rotation), oldest first. Searches match the digests of every one of them.
    async fn index_keys(&self, tenant: &str) -> StoreResult<Vec<DataKeyRecord>>;
    /// Customers of `tenant` holding personal data whose blind-index rows were computed under a
    /// version below `version`, in id order after `after`.
    async fn customers_to_reindex(
        &self,
        tenant: &str,
        version: i64,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Unindexed>>;
    /// Retires every live index version of `tenant` below `newest`, in one transaction that
    /// first locks the live versions (so no customer write is in flight) and then finds no
    /// customer left below `newest`; deletes the blind-index rows of older versions. `None` if
    /// a customer still needs re-indexing (nothing changed), else the retired versions.
    async fn retire_index_versions(
        &self,
        tenant: &str,
        newest: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<Vec<i64>>>;
    /// Every data key version (all statuses), for `kasho keys status`.
    async fn all_data_keys(&self) -> StoreResult<Vec<DataKeyRecord>>;
    /// Replaces a customer's blind-index rows with `lookups` (computed under `versions`, the
    /// live index versions, which must still be the live ones) if its sealed profile is still
    /// `pii`, and records the newest version as its `lookup_version`. `Ok(false)` if the
    /// customer changed or was erased meanwhile.
    async fn reindex_customer(
        &self,
        tenant: &str,
        id: &str,
        pii: &str,
        lookups: &[crate::store::CustomerLookup],
        versions: &[i64],
    ) -> StoreResult<bool>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> KeyStore for S {
    async fn master_keys(&self) -> StoreResult<Vec<MasterKeyRecord>> {
        Ok(sqlx::query_as("SELECT * FROM master_keys ORDER BY version")
            .fetch_all(self.pool())
            .await?)
    }

    async fn add_master_key(
        &self,
        k: &MasterKeyRecord,
        retire_active: bool,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if retire_active {
            sqlx::query("UPDATE master_keys SET status = 'retiring' WHERE status = 'active'")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO master_keys (version, root_id, wrapped, status, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(k.version)
        .bind(&k.root_id)
        .bind(&k.wrapped)
        .bind(&k.status)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retire_master_key(
        &self,
        version: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        // Under the row's lock, and in the same statement as the check: nothing may be
        // wrapped under the version (inserts under a non-active version are refused, see
        // `insert_data_key`).
        sqlx::query("UPDATE master_keys SET status = status WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(
            "UPDATE master_keys SET status = 'retired', retired_at = $2 \
             WHERE version = $1 AND status = 'retiring' \
             AND NOT EXISTS (SELECT 1 FROM data_keys WHERE kek_version = $1 AND wrapped IS NOT NULL)",
        )
        .bind(version)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            self.append_audit_tx(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn data_key(&self, id: &str, version: i64) -> StoreResult<Option<DataKeyRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM data_keys WHERE id = $1 AND version = $2")
                .bind(id)
                .bind(version)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn latest_data_key(
        &self,
        tenant: &str,
        owner: &str,
    ) -> StoreResult<Option<DataKeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM data_keys WHERE tenant_id = $1 AND owner = $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(owner)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn insert_data_key(
        &self,
        k: &DataKeyRecord,
        replace: Option<&'static str>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        // A data key is only ever wrapped under the active master key version: one whose
        // wrapping began before a rotation made that version `retiring` is refused (the
        // caller retries under the new version), so a rotation's rewrap can never miss it
        // and the old version is never retired while it still wraps a key. The share lock
        // makes a concurrent rotation wait for this insert (PostgreSQL).
        let kek: Option<(String,)> = sqlx::query_as(for_share!(
            B,
            "SELECT status FROM master_keys WHERE version = $1"
        ))
        .bind(k.kek_version)
        .fetch_optional(&mut *tx)
        .await?;
        if kek.is_none_or(|(status,)| status != "active") {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(status) = replace {
            let n = sqlx::query(
                "UPDATE data_keys SET status = $3 WHERE id = $1 AND version = $2 AND status = 'active'",
            )
            .bind(&k.id)
            .bind(k.version - 1)
            .bind(status)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO data_keys (id, version, tenant_id, owner, kek_version, wrapped, status, encryptions, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8)",
        )
        .bind(&k.id)
        .bind(k.version)
        .bind(&k.tenant_id)
        .bind(&k.owner)
        .bind(k.kek_version)
        .bind(&k.wrapped)
        .bind(k.encryptions)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reserve_encryptions(
        &self,
        id: &str,
        version: i64,
        n: i64,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let total: Option<(i64,)> = sqlx::query_as(
            "UPDATE data_keys SET encryptions = encryptions + $3 \
             WHERE id = $1 AND version = $2 AND status = 'active' RETURNING encryptions",
        )
        .bind(id)
        .bind(version)
        .bind(n)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(total.map(|t| t.0))
    }

    async fn data_keys_with_status(
        &self,
        status: &str,
        limit: i64,
    ) -> StoreResult<Vec<DataKeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM data_keys WHERE status = $1 ORDER BY id, version LIMIT $2",
        )
        .bind(status)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn data_keys_not_under(
        &self,
        kek_version: i64,
        limit: i64,
    ) -> StoreResult<Vec<DataKeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM data_keys WHERE kek_version <> $1 AND wrapped IS NOT NULL ORDER BY id, version LIMIT $2",
        )
        .bind(kek_version)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn rewrap_data_key(
        &self,
        id: &str,
        version: i64,
        old_kek: i64,
        new_kek: i64,
        wrapped: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE data_keys SET kek_version = $4, wrapped = $5 \
             WHERE id = $1 AND version = $2 AND kek_version = $3 AND wrapped IS NOT NULL",
        )
        .bind(id)
        .bind(version)
        .bind(old_kek)
        .bind(new_kek)
        .bind(wrapped)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn retire_data_key(
        &self,
        id: &str,
        version: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE data_keys SET status = 'retired', retired_at = $3 \
             WHERE id = $1 AND version = $2 AND status IN ('retiring', 'spent')",
        )
        .bind(id)
        .bind(version)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            self.append_audit_tx(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn retired_data_keys(&self, before: Timestamp) -> StoreResult<Vec<DataKeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM data_keys WHERE status = 'retired' AND retired_at <= $1 AND wrapped IS NOT NULL ORDER BY id, version",
        )
        .bind(before.as_micros())
        .fetch_all(self.pool())
        .await?)
    }

    async fn purge_data_key(&self, id: &str, version: i64) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("UPDATE data_keys SET wrapped = NULL WHERE id = $1 AND version = $2 AND status = 'retired'")
            .bind(id)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn reopen_data_key(&self, id: &str, version: i64) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE data_keys SET status = 'retiring', retired_at = NULL WHERE id = $1 AND version = $2 AND status = 'retired' AND wrapped IS NOT NULL",
        )
        .bind(id)
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn purge_retired_masters(&self, before: Timestamp) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let m = sqlx::query(
            "UPDATE master_keys SET wrapped = NULL WHERE status = 'retired' AND retired_at <= $1 AND wrapped IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM data_keys WHERE kek_version = master_keys.version AND wrapped IS NOT NULL)",
        )
        .bind(before.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(m)
    }

    async fn encrypted_values(
        &self,
        col: EncryptedColumn,
        tenant: &str,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<EncryptedValue>> {
        // Table and column names come from the static registry, never from input.
        let filter = if prefix.is_some() {
            "substr({c}, 1, length($2)) = $2"
        } else {
            "($2 IS NULL AND substr({c}, 1, 4) <> 'kx1.')"
        };
        let sql = format!(
            "SELECT {r} AS row_key, {c} AS stored FROM {t} WHERE tenant_id = $1 AND {c} IS NOT NULL AND {filter} \
             AND ($3 IS NULL OR {r} > $3) ORDER BY {r} LIMIT $4",
            filter = filter.replace("{c}", col.column),
            r = col.row,
            c = col.column,
            t = col.table,
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(prefix)
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    async fn replace_encrypted(
        &self,
        col: EncryptedColumn,
        tenant: &str,
        row: &str,
        old: &str,
        new: &str,
    ) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE {t} SET {c} = $4 WHERE tenant_id = $1 AND {r} = $2 AND {c} = $3",
            r = col.row,
            c = col.column,
            t = col.table,
        );
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(row)
            .bind(old)
            .bind(new)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn count_encrypted(&self, col: EncryptedColumn, prefix: &str) -> StoreResult<i64> {
        let sql = format!(
            "SELECT COUNT(*) FROM {t} WHERE substr({c}, 1, length($1)) = $1",
            c = col.column,
            t = col.table,
        );
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(prefix)
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    async fn table_exists(&self, table: &str) -> StoreResult<bool> {
        let (n,): (i64,) = sqlx::query_as(<B as Backend>::TABLE_EXISTS)
            .bind(table)
            .fetch_one(self.pool())
            .await?;
        Ok(n > 0)
    }

    async fn root_key_check(&self) -> StoreResult<Option<RootKeyCheck>> {
        if !self.table_exists("root_key_check").await? {
            return Ok(None);
        }
        Ok(sqlx::query_as(
            "SELECT root_id, check_value, jwt_kid, created_at FROM root_key_check WHERE id = 1",
        )
        .fetch_optional(self.pool())
        .await?)
    }

    async fn record_root_key_check(&self, c: &RootKeyCheck) -> StoreResult<RootKeyCheck> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO root_key_check (id, root_id, check_value, jwt_kid, created_at) VALUES (1, $1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&c.root_id)
        .bind(&c.check_value)
        .bind(&c.jwt_kid)
        .bind(c.created_at)
        .execute(&mut *tx)
        .await?;
        let stored: RootKeyCheck = sqlx::query_as(
            "SELECT root_id, check_value, jwt_kid, created_at FROM root_key_check WHERE id = 1",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn adopt_jwt_kid(&self, kid: &str, audit: &[NewAuditEvent]) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n =
            sqlx::query("UPDATE root_key_check SET jwt_kid = $1 WHERE id = 1 AND jwt_kid <> $1")
                .bind(kid)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n > 0 {
            self.append_audit_tx(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn holds_keys(&self) -> StoreResult<bool> {
        if self.root_key_check().await?.is_some() {
            return Ok(true);
        }
        for table in ["master_keys", "audit_events"] {
            if self.table_exists(table).await? {
                let sql = format!("SELECT COUNT(*) FROM (SELECT 1 FROM {table} LIMIT 1) AS t");
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(self.pool())
                    .await?;
                if n > 0 {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn index_keys(&self, tenant: &str) -> StoreResult<Vec<DataKeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM data_keys WHERE tenant_id = $1 AND owner = 'index' \
             AND status IN ('active', 'spent') AND wrapped IS NOT NULL ORDER BY version",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    async fn customers_to_reindex(
        &self,
        tenant: &str,
        version: i64,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Unindexed>> {
        Ok(sqlx::query_as(
            "SELECT id, pii FROM customers WHERE tenant_id = $1 AND pii IS NOT NULL AND lookup_version < $2 \
             AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4",
        )
        .bind(tenant)
        .bind(version)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn retire_index_versions(
        &self,
        tenant: &str,
        newest: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<Vec<i64>>> {
        let mut tx = self.begin_write().await?;
        // Customer writes hold a share lock on these rows until they commit: taking the
        // update lock waits for them, and the check below (a new statement) sees them.
        sqlx::query(
            "UPDATE data_keys SET status = status WHERE tenant_id = $1 AND owner = 'index' \
             AND status IN ('active', 'spent')",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        let (behind,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM customers WHERE tenant_id = $1 AND pii IS NOT NULL AND lookup_version < $2",
        )
        .bind(tenant)
        .bind(newest)
        .fetch_one(&mut *tx)
        .await?;
        if behind > 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let retired: Vec<(i64,)> = sqlx::query_as(
            "UPDATE data_keys SET status = 'retired', retired_at = $3 WHERE tenant_id = $1 AND owner = 'index' \
             AND status IN ('active', 'spent') AND version < $2 RETURNING version",
        )
        .bind(tenant)
        .bind(newest)
        .bind(now.as_micros())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM customer_lookup WHERE tenant_id = $1 AND (index_version IS NULL OR index_version < $2)",
        )
        .bind(tenant)
        .bind(newest)
        .execute(&mut *tx)
        .await?;
        if !retired.is_empty() {
            self.append_audit_tx(&mut tx, audit).await?;
        }
        tx.commit().await?;
        let mut versions: Vec<i64> = retired.into_iter().map(|(v,)| v).collect();
        versions.sort_unstable();
        Ok(Some(versions))
    }

    async fn reindex_customer(
        &self,
        tenant: &str,
        id: &str,
        pii: &str,
        lookups: &[crate::store::CustomerLookup],
        versions: &[i64],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        if !index_versions_hold_tx(&mut tx, tenant, versions).await? {
            tx.rollback().await?;
            return Err(StoreError::IndexKeyChanged);
        }
        let n = sqlx::query(
            "UPDATE customers SET lookup_version = $4 WHERE tenant_id = $1 AND id = $2 AND pii = $3 AND status = 'active'",
        )
        .bind(tenant)
        .bind(id)
        .bind(pii)
        .bind(versions.last().copied().unwrap_or(0))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM customer_lookup WHERE tenant_id = $1 AND customer_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        customers::insert_lookups_tx(&mut tx, tenant, id, lookups).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn all_data_keys(&self) -> StoreResult<Vec<DataKeyRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM data_keys ORDER BY tenant_id, owner, id, version")
                .fetch_all(self.pool())
                .await?,
        )
    }
}

/// Inside a customer write: whether the tenant's live index versions are still
/// exactly `versions` (the ones the write computed its blind-index rows under),
/// holding a share lock on them until the write commits so that an index rotation
/// cannot retire one meanwhile (PostgreSQL; SQLite's writer lock serialises anyway).
pub(super) async fn index_versions_hold_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: &str,
    versions: &[i64],
) -> StoreResult<bool> {
    if versions.is_empty() {
        return Ok(true);
    }
    let live: Vec<(i64,)> = sqlx::query_as(for_share!(
        B,
        "SELECT version FROM data_keys WHERE tenant_id = $1 AND owner = 'index' \
         AND status IN ('active', 'spent') AND wrapped IS NOT NULL ORDER BY version"
    ))
    .bind(tenant)
    .fetch_all(&mut **tx)
    .await?;
    Ok(live.iter().map(|(v,)| *v).eq(versions.iter().copied()))
}
