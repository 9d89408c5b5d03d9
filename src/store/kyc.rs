//! Storage of KYC: per-tenant limits by tier and currency, verification submissions, their
//! documents (content sealed under the customer's data key before it gets here) and their
//! one-time decisions. (The ledger core applies the limits to what the ledger writer loads under
//! lock: tiers, balances and the running totals of `ledger_counters`.) Implemented once for both
//! backends (any [`SqlStore`]), like the rest of the store.
//!
//! Erasure: a submission, its documents and its decision are created only under the
//! customer's row lock (`lock_customer_tx`, the lock the erasure takes), and every read here
//! sees only customers that are not erased.

use async_trait::async_trait;

use super::backend::{Backend, Paged, RowsAffected, SqlStore};
use super::{Page, StoreError, StoreResult, notes};
use crate::domain::audit::NewAuditEvent;
use crate::ids::TenantId;

/// One tier's limits in one currency (`None`: no limit for that figure).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KycLimitRecord {
    pub tenant_id: String,
    pub tier: i64,
    pub currency: String,
    pub max_single_transfer: Option<i64>,
    pub daily_outgoing: Option<i64>,
    pub monthly_outgoing: Option<i64>,
    pub max_balance: Option<i64>,
    pub updated_by: String,
    pub updated_at: i64,
}

/// A submission with its decision, if it has one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KycSubmissionRecord {
    pub id: String,
    pub tenant_id: String,
    pub customer_id: String,
    pub requested_tier: i64,
    pub tier_at_submission: i64,
    /// `submitted`, `approved` or `rejected`.
    pub status: String,
    pub submitted_by: String,
    pub submitted_at: i64,
    pub tier_after: Option<i64>,
    /// Decisions made before staff reasons became codes (migration 0016): the free-text note
    /// or reason, sealed under the customer's data key. `None` for later decisions.
    pub reason: Option<String>,
    /// The staff's reason code (a rejection's [`crate::domain::reasons::KycRejection`], or
    /// `approved`); `None` for decisions made before codes existed.
    pub reason_code: Option<String>,
    /// The code the customer is shown for a rejection.
    pub customer_code: Option<String>,
    /// The decision's staff-only note, if it has one.
    pub note_id: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
}

/// A document as listed: metadata only, never the content.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KycDocumentMeta {
    pub id: String,
    pub tenant_id: String,
    pub submission_id: String,
    pub customer_id: String,
    pub document_type: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub created_at: i64,
}

/// A document with its sealed content.
#[derive(Clone, sqlx::FromRow)]
pub struct KycDocumentRecord {
    #[sqlx(flatten)]
    pub meta: KycDocumentMeta,
    /// The ciphertext (`kx1.…`) under the customer's data key, AAD row = document id.
    pub content: String,
}

impl std::fmt::Debug for KycDocumentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KycDocumentRecord")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct NewKycSubmission {
    pub id: String,
    pub tenant_id: TenantId,
    pub customer_id: String,
    pub requested_tier: i64,
    pub tier_at_submission: i64,
    pub submitted_by: String,
    pub submitted_at: i64,
}

#[derive(Clone)]
pub struct NewKycDocument {
    pub id: String,
    pub document_type: &'static str,
    pub content_type: &'static str,
    pub size_bytes: i64,
    pub sha256: String,
    /// Already sealed.
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct NewKycDecision {
    pub submission_id: String,
    pub tenant_id: TenantId,
    /// `approved` or `rejected`.
    pub decision: &'static str,
    /// The tier an approval sets (ignored for a rejection, which keeps the tier).
    pub tier: Option<i64>,
    /// The staff's reason code and, for a rejection, the customer-facing one.
    pub reason_code: &'static str,
    pub customer_code: Option<&'static str>,
    /// The staff note, written in the decision's transaction.
    pub note: Option<super::notes::NewStaffNote>,
    pub decided_by: String,
    pub decided_at: i64,
}

/// What deciding a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecideOutcome {
    Decided,
    /// It was decided before (by this or another request).
    AlreadyDecided,
    /// The customer is no longer active (erased): nothing was changed.
    CustomerUnavailable,
}

/// The facts of a customer that KYC needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KycCustomer {
    pub id: String,
    pub user_id: Option<String>,
    pub status: String,
    pub kyc_tier: i64,
}

#[async_trait]
pub trait KycStore: Send + Sync {
    /// Every limit row of a tenant.
    async fn kyc_limits(&self, tenant: &TenantId) -> StoreResult<Vec<KycLimitRecord>>;
    /// Replaces one currency's rows with `rows`, with the audit record, in one transaction.
    async fn replace_kyc_limits(
        &self,
        tenant: &TenantId,
        currency: &str,
        rows: &[KycLimitRecord],
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    async fn kyc_customer(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<KycCustomer>>;
    /// Inserts a submission and its documents, with the audit records, if the customer is
    /// still active (`Ok(false)` otherwise, nothing written). `Conflict` if the customer
    /// already has an open submission. The documents are taken by value: each one's ciphertext
    /// is handed to the driver without a copy and freed once it is written.
    async fn create_kyc_submission(
        &self,
        s: &NewKycSubmission,
        docs: Vec<NewKycDocument>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    async fn get_kyc_submission(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<KycSubmissionRecord>>;
    /// Newest first, optionally one customer's or one status's.
    async fn list_kyc_submissions(
        &self,
        tenant: &TenantId,
        customer: Option<&str>,
        status: Option<&str>,
        page: &Page,
    ) -> StoreResult<Vec<KycSubmissionRecord>>;
    /// Document metadata of one submission or one customer, oldest first.
    async fn list_kyc_documents(
        &self,
        tenant: &TenantId,
        submission: Option<&str>,
        customer: Option<&str>,
    ) -> StoreResult<Vec<KycDocumentMeta>>;
    async fn get_kyc_document(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<KycDocumentRecord>>;
    /// Decides a `submitted` submission once: its status moves, the decision row is inserted,
    /// an approval sets the customer's tier, and the audit records are appended, in one
    /// transaction.
    async fn decide_kyc_submission(
        &self,
        d: &NewKycDecision,
        audit: &[NewAuditEvent],
    ) -> StoreResult<DecideOutcome>;
}

/// Every read of submissions and documents sees only those of customers that are not erased:
/// an erasure committed on any instance hides them from every instance's next read.
const SUBMISSION_SELECT: &str = "SELECT s.id, s.tenant_id, s.customer_id, s.requested_tier, s.tier_at_submission, \
     s.status, s.submitted_by, s.submitted_at, d.tier_after, d.reason, d.reason_code, d.customer_code, d.note_id, \
     d.decided_by, d.decided_at \
     FROM kyc_submissions s \
     JOIN customers c ON c.tenant_id = s.tenant_id AND c.id = s.customer_id AND c.status = 'active' \
     LEFT JOIN kyc_decisions d ON d.submission_id = s.id";

/// The SELECT of a submission with its decision (shared by both backends).
pub(super) fn submission_select() -> &'static str {
    SUBMISSION_SELECT
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> KycStore for S {
    async fn kyc_limits(&self, tenant: &TenantId) -> StoreResult<Vec<KycLimitRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM kyc_limits WHERE tenant_id = $1 ORDER BY currency, tier")
                .bind(tenant.as_str())
                .fetch_all(self.pool())
                .await?,
        )
    }

    async fn replace_kyc_limits(
        &self,
        tenant: &TenantId,
        currency: &str,
        rows: &[KycLimitRecord],
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM kyc_limits WHERE tenant_id = $1 AND currency = $2")
            .bind(tenant.as_str())
            .bind(currency)
            .execute(&mut *tx)
            .await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO kyc_limits (tenant_id, tier, currency, max_single_transfer, daily_outgoing, \
                 monthly_outgoing, max_balance, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(tenant.as_str())
            .bind(r.tier)
            .bind(currency)
            .bind(r.max_single_transfer)
            .bind(r.daily_outgoing)
            .bind(r.monthly_outgoing)
            .bind(r.max_balance)
            .bind(&r.updated_by)
            .bind(r.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn kyc_customer(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<KycCustomer>> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, status, kyc_tier FROM customers WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn create_kyc_submission(
        &self,
        s: &NewKycSubmission,
        docs: Vec<NewKycDocument>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_document_write().await?;
        // Serialised with the erasure on the customer's row (see `lock_customer_tx`).
        match Self::lock_customer_tx(&mut tx, s.tenant_id.as_str(), &s.customer_id).await {
            Ok(_) => {}
            Err(StoreError::CustomerErased) => {
                tx.rollback().await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let n = sqlx::query(
            "INSERT INTO kyc_submissions (id, tenant_id, customer_id, requested_tier, tier_at_submission, \
             status, submitted_by, submitted_at) SELECT $1, $2, $3, $4, $5, 'submitted', $6, $7 \
             WHERE EXISTS (SELECT 1 FROM customers WHERE tenant_id = $2 AND id = $3 AND status = 'active')",
        )
        .bind(&s.id)
        .bind(s.tenant_id.as_str())
        .bind(&s.customer_id)
        .bind(s.requested_tier)
        .bind(s.tier_at_submission)
        .bind(&s.submitted_by)
        .bind(s.submitted_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for d in docs {
            sqlx::query(
                "INSERT INTO kyc_documents (id, tenant_id, submission_id, customer_id, document_type, \
                 content_type, size_bytes, sha256, content, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&d.id)
            .bind(s.tenant_id.as_str())
            .bind(&s.id)
            .bind(&s.customer_id)
            .bind(d.document_type)
            .bind(d.content_type)
            .bind(d.size_bytes)
            .bind(&d.sha256)
            .bind(d.content)
            .bind(s.submitted_at)
            .execute(&mut *tx)
            .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_kyc_submission(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<KycSubmissionRecord>> {
        let sql = format!(
            "{} WHERE s.tenant_id = $1 AND s.id = $2",
            submission_select()
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    async fn list_kyc_submissions(
        &self,
        tenant: &TenantId,
        customer: Option<&str>,
        status: Option<&str>,
        page: &Page,
    ) -> StoreResult<Vec<KycSubmissionRecord>> {
        let sql = format!(
            "{} WHERE s.tenant_id = $1 AND ($2 IS NULL OR s.customer_id = $2) \
             AND ($3 IS NULL OR s.status = $3) AND ($4 IS NULL OR s.id < $4) \
             ORDER BY s.id DESC LIMIT $5",
            submission_select()
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(customer)
            .bind(status)
            .page(page)
            .fetch_all(self.pool())
            .await?)
    }

    async fn list_kyc_documents(
        &self,
        tenant: &TenantId,
        submission: Option<&str>,
        customer: Option<&str>,
    ) -> StoreResult<Vec<KycDocumentMeta>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, submission_id, customer_id, document_type, content_type, size_bytes, \
             sha256, created_at FROM kyc_documents WHERE tenant_id = $1 \
             AND ($2 IS NULL OR submission_id = $2) AND ($3 IS NULL OR customer_id = $3) \
             AND EXISTS (SELECT 1 FROM customers c WHERE c.tenant_id = kyc_documents.tenant_id \
                         AND c.id = kyc_documents.customer_id AND c.status = 'active') ORDER BY id",
        )
        .bind(tenant.as_str())
        .bind(submission)
        .bind(customer)
        .fetch_all(self.pool())
        .await?)
    }

    async fn get_kyc_document(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<KycDocumentRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM kyc_documents WHERE tenant_id = $1 AND id = $2 \
             AND EXISTS (SELECT 1 FROM customers c WHERE c.tenant_id = kyc_documents.tenant_id \
                         AND c.id = kyc_documents.customer_id AND c.status = 'active')",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn decide_kyc_submission(
        &self,
        d: &NewKycDecision,
        audit: &[NewAuditEvent],
    ) -> StoreResult<DecideOutcome> {
        use DecideOutcome;
        let mut tx = self.begin_write().await?;
        // The one-time transition: a second decision finds no `submitted` row.
        let row: Option<(String,)> = sqlx::query_as(
            "UPDATE kyc_submissions SET status = $3 WHERE tenant_id = $1 AND id = $2 \
             AND status = 'submitted' RETURNING customer_id",
        )
        .bind(d.tenant_id.as_str())
        .bind(&d.submission_id)
        .bind(d.decision)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((customer,)) = row else {
            tx.rollback().await?;
            return Ok(DecideOutcome::AlreadyDecided);
        };
        // Under the customer's row lock, like the erasure (see `lock_customer_tx`).
        let before = match Self::lock_customer_tx(&mut tx, d.tenant_id.as_str(), &customer).await {
            Ok(tier) => tier,
            Err(StoreError::CustomerErased) => {
                tx.rollback().await?;
                return Ok(DecideOutcome::CustomerUnavailable);
            }
            Err(e) => return Err(e),
        };
        let after = d.tier.unwrap_or(before);
        sqlx::query(
            "INSERT INTO kyc_decisions (submission_id, tenant_id, customer_id, decision, tier_before, \
             tier_after, reason_code, customer_code, note_id, decided_by, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&d.submission_id)
        .bind(d.tenant_id.as_str())
        .bind(&customer)
        .bind(d.decision)
        .bind(before)
        .bind(after)
        .bind(d.reason_code)
        .bind(d.customer_code)
        .bind(d.note.as_ref().map(|n| n.id.as_str()))
        .bind(&d.decided_by)
        .bind(d.decided_at)
        .execute(&mut *tx)
        .await?;
        if let Some(n) = &d.note {
            notes::insert_staff_note_tx(&mut tx, n).await?;
        }
        if after != before {
            sqlx::query("UPDATE customers SET kyc_tier = $3 WHERE tenant_id = $1 AND id = $2")
                .bind(d.tenant_id.as_str())
                .bind(&customer)
                .bind(after)
                .execute(&mut *tx)
                .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(DecideOutcome::Decided)
    }
}
