//! Compliance records: the records of processing (GDPR Art. 30) with the retention in force.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::processing::{AUDIT_MINIMUM_RETENTION_DAYS, ProcessingRecord, RetentionPolicy};
use crate::http::error::ErrorBody;
use crate::http::state::AppState;
use crate::service::retention;

/// The Art. 6(1) basis of a processing activity.
#[derive(Debug, Serialize, ToSchema)]
pub struct LegalBasisView {
    /// `contract`, `legal_obligation` or `legitimate_interest`.
    pub code: &'static str,
    /// e.g. `GDPR Art. 6(1)(b)`.
    pub article: &'static str,
}

/// How long a class of data is kept, with the configured values in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionView {
    /// The period in words, with the numbers in force.
    pub period: String,
    /// The period in days after its starting event, when there is a fixed one.
    pub days: Option<u32>,
    /// The configuration key that sets it.
    pub config_key: Option<&'static str>,
    /// What deletes the data once the period is over.
    pub enforced_by: &'static str,
}

/// One class of personal data Kasho holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessingRecordView {
    /// Always `processing_record`.
    pub object: &'static str,
    /// A stable identifier, e.g. `sessions_and_devices`.
    pub id: &'static str,
    pub description: &'static str,
    pub data_subjects: Vec<&'static str>,
    /// The categories of personal data in the class.
    pub categories: Vec<&'static str>,
    pub purpose: &'static str,
    pub legal_basis: Vec<LegalBasisView>,
    pub retention: RetentionView,
    /// Whether Kasho encrypts the class at rest itself.
    pub encrypted_at_rest: bool,
    /// How the class is protected in storage, in words.
    pub protection: &'static str,
    /// Who receives or can reach the data.
    pub recipients: Vec<&'static str>,
    /// Where it is stored (tables, or `standard error`).
    pub storage: Vec<&'static str>,
    /// `false` for a class declared ahead of the code that will hold it.
    pub held: bool,
}

/// The retention periods in force, as configured.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionPolicyView {
    /// Always `retention_policy`.
    pub object: &'static str,
    /// Days an ended session and its refresh tokens are kept.
    pub session_retention_days: u32,
    /// Seconds an idempotency key and its stored response live.
    pub idempotency_ttl_seconds: i64,
    /// Hours an idempotency record is kept after it expires.
    pub idempotency_retention_hours: u32,
    /// Audit retention as configured.
    pub audit_retention_days_configured: u32,
    /// Audit retention applied: the configured value, never below the minimum.
    pub audit_retention_days: u32,
    /// The floor audit retention never goes below (12 months).
    pub audit_retention_minimum_days: u32,
    /// How often the server runs the retention job.
    pub job_interval_seconds: u32,
}

/// The records of processing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessingRecordList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ProcessingRecordView>,
    /// Always `false`: the registry is published whole.
    pub has_more: bool,
    pub retention_in_force: RetentionPolicyView,
}

fn view(r: &ProcessingRecord, policy: &RetentionPolicy, ttl: i64) -> ProcessingRecordView {
    let retention = r.retention.in_force(policy, ttl);
    ProcessingRecordView {
        object: "processing_record",
        id: r.id,
        description: r.description,
        data_subjects: r.data_subjects.to_vec(),
        categories: r.categories.to_vec(),
        purpose: r.purpose,
        legal_basis: r
            .legal_basis
            .iter()
            .map(|b| LegalBasisView {
                code: b.code(),
                article: b.article(),
            })
            .collect(),
        retention: RetentionView {
            period: retention.period,
            days: retention.days,
            config_key: retention.config_key,
            enforced_by: retention.enforced_by,
        },
        encrypted_at_rest: r.encrypted_at_rest,
        protection: r.protection,
        recipients: r.recipients.to_vec(),
        storage: r.storage.to_vec(),
        held: r.held,
    }
}

/// The records of processing: each class of personal data, its purpose, legal basis, retention
/// (with the configured periods in force), encryption and recipients.
#[utoipa::path(get, path = "/v1/compliance/processing-records", operation_id = "listProcessingRecords", tag = "compliance", security(("bearer" = [])), responses(
    (status = 200, body = ProcessingRecordList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn processing_records(State(state): State<Arc<AppState>>) -> Json<ProcessingRecordList> {
    let r = retention::records_of_processing(&state.core);
    let p = r.policy;
    Json(ProcessingRecordList {
        object: "list",
        data: r
            .records
            .iter()
            .map(|rec| view(rec, &p, r.idempotency_ttl_seconds))
            .collect(),
        has_more: false,
        retention_in_force: RetentionPolicyView {
            object: "retention_policy",
            session_retention_days: p.session_days,
            idempotency_ttl_seconds: r.idempotency_ttl_seconds,
            idempotency_retention_hours: p.idempotency_hours,
            audit_retention_days_configured: p.audit_days,
            audit_retention_days: p.audit_days_effective(),
            audit_retention_minimum_days: AUDIT_MINIMUM_RETENTION_DAYS,
            job_interval_seconds: p.interval_seconds,
        },
    })
}
