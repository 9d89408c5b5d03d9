//! KYC: the tenant's limits per tier and currency, verification submissions with identity
//! documents, the review queue, approval and rejection, and document download.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Recorded;
use crate::domain::kyc::TierLimits;
use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::require_json;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::large_json;
use crate::http::state::AppState;
use crate::http::views::{List, page};
use crate::ids::KycSubmissionId;
use crate::service::kyc::{
    self, CurrencyLimits, Decision, DocumentInput, SubmissionView, UploadedContent,
};
use crate::service::{Principal, RequestMeta};
use crate::store::kyc::KycLimitRecord;

// ---------------------------------------------------------------- wire types

/// One tier's limits in one currency, minor units; `null` means no limit for that figure.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierLimitsBody {
    /// 0 to 3.
    pub tier: i64,
    /// The largest single outgoing movement (transfer, withdrawal, capture).
    pub max_single_transfer: Option<i64>,
    /// Outgoing total per UTC day.
    pub daily_outgoing: Option<i64>,
    /// Outgoing total per UTC calendar month.
    pub monthly_outgoing: Option<i64>,
    /// The largest posted balance a credit may lead to.
    pub max_balance: Option<i64>,
}

impl From<&KycLimitRecord> for TierLimitsBody {
    fn from(r: &KycLimitRecord) -> Self {
        Self {
            tier: r.tier,
            max_single_transfer: r.max_single_transfer,
            daily_outgoing: r.daily_outgoing,
            monthly_outgoing: r.monthly_outgoing,
            max_balance: r.max_balance,
        }
    }
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutLimitsRequest {
    /// ISO 4217 code; one of the tenant's currencies.
    pub currency: String,
    /// Every tier allowed to hold this currency (1 to 4). A tier left out may not send or
    /// receive in it. Replaces the currency's previous limits.
    pub tiers: Vec<TierLimitsBody>,
}

#[derive(Serialize, ToSchema)]
pub struct CurrencyLimitsView {
    pub currency: String,
    /// `false`: the tenant has set no limits for this currency, so no KYC limit applies to it.
    pub configured: bool,
    pub tiers: Vec<TierLimitsBody>,
}

impl From<CurrencyLimits> for CurrencyLimitsView {
    fn from(c: CurrencyLimits) -> Self {
        Self {
            tiers: c.tiers.iter().map(TierLimitsBody::from).collect(),
            currency: c.currency,
            configured: c.configured,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LimitsView {
    /// Always `kyc_limits`.
    pub object: &'static str,
    /// One entry per tenant currency.
    pub currencies: Vec<CurrencyLimitsView>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentUpload {
    /// `passport`, `national_id`, `drivers_licence`, `proof_of_address` or `selfie`.
    pub document_type: String,
    /// `application/pdf`, `image/png` or `image/jpeg`; must match the content's bytes.
    pub content_type: String,
    /// The file, standard base64; at most 5 MiB decoded.
    pub content: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The tier asked for (above the current one, at most 3).
    pub requested_tier: i64,
    /// 1 to 4 documents.
    pub documents: Vec<DocumentUpload>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The tier granted (1 to 3).
    pub tier: i64,
    /// Free text for staff, 1 to 2000 characters: sealed, readable with `staff_notes:read`
    /// only, never shown to the customer.
    pub note: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// The staff's reason code: `document_unreadable`, `document_expired`,
    /// `document_not_accepted`, `details_mismatch`, `selfie_mismatch`, `incomplete_submission`,
    /// `suspected_fraud`, `sanctions_match`, `high_risk` or `other`. The customer is shown a
    /// customer-facing code derived from it (`unable_to_verify` for fraud, sanctions, risk and
    /// other).
    pub reason: String,
    /// Free text for staff, 1 to 2000 characters: sealed, readable with `staff_notes:read`
    /// only, never shown to the customer.
    pub note: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DocumentView {
    /// Always `kyc_document`.
    pub object: &'static str,
    pub id: String,
    pub document_type: String,
    pub content_type: String,
    pub size_bytes: i64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    pub created_at: String,
}

/// A decision. A customer reading its own submissions gets `decision`, `tier_after`,
/// `decided_at` and `customer_reason_code` only (the other fields are `null`).
#[derive(Serialize, ToSchema)]
pub struct DecisionView {
    /// `approved` or `rejected`.
    pub decision: String,
    pub tier_after: i64,
    /// A rejection's customer-facing code: `document_unreadable`, `document_expired`,
    /// `document_not_accepted`, `details_mismatch`, `selfie_mismatch`, `documents_missing` or
    /// `unable_to_verify` (`null` for approvals and for decisions made before codes existed).
    pub customer_reason_code: Option<String>,
    /// Staff only: the staff's reason code (`approved` for an approval).
    pub reason_code: Option<String>,
    /// Staff only: the decision's staff note (`GET /v1/staff-notes/{id}`, `staff_notes:read`).
    pub note_id: Option<String>,
    /// Staff holding `staff_notes:read` only: the free-text reason of a decision made before
    /// reasons became codes.
    pub legacy_reason: Option<String>,
    /// Staff only: who decided.
    pub decided_by: Option<String>,
    pub decided_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct SubmissionBody {
    /// Always `kyc_submission`.
    pub object: &'static str,
    pub id: String,
    pub customer_id: String,
    pub requested_tier: i64,
    pub tier_at_submission: i64,
    /// `submitted`, `approved` or `rejected`.
    pub status: String,
    /// Who submitted; `null` for a customer reading a submission staff made for it.
    pub submitted_by: Option<String>,
    pub submitted_at: String,
    /// Absent while the submission awaits a decision.
    pub decision: Option<DecisionView>,
    /// Metadata only; the content is downloaded separately.
    pub documents: Vec<DocumentView>,
}

impl From<SubmissionView> for SubmissionBody {
    fn from(v: SubmissionView) -> Self {
        let s = v.submission;
        let decision = v.decision.map(|d| DecisionView {
            decision: d.decision,
            tier_after: d.tier_after,
            customer_reason_code: d.customer_reason_code,
            reason_code: d.reason_code,
            note_id: d.note_id,
            legacy_reason: d.legacy_reason,
            decided_by: d.decided_by,
            decided_at: kyc::at(d.decided_at),
        });
        Self {
            object: "kyc_submission",
            id: s.id,
            customer_id: s.customer_id,
            requested_tier: s.requested_tier,
            tier_at_submission: s.tier_at_submission,
            status: s.status,
            submitted_by: v.submitted_by,
            submitted_at: kyc::at(s.submitted_at),
            decision,
            documents: v
                .documents
                .into_iter()
                .map(|d| DocumentView {
                    object: "kyc_document",
                    id: d.id,
                    document_type: d.document_type,
                    content_type: d.content_type,
                    size_bytes: d.size_bytes,
                    sha256: d.sha256,
                    created_at: kyc::at(d.created_at),
                })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CustomerKycView {
    /// Always `customer_kyc`.
    pub object: &'static str,
    pub customer_id: String,
    /// The current tier, 0 to 3.
    pub tier: i64,
    /// Every submission with its decision, newest first.
    pub history: Vec<SubmissionBody>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmissionListQuery {
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    pub starting_after: Option<String>,
    /// `submitted` (the review queue), `approved` or `rejected`.
    pub status: Option<String>,
}

// ---------------------------------------------------------------- handlers

/// The tenant's KYC limits, per currency and tier; says which currencies are unconfigured.
#[utoipa::path(get, path = "/v1/kyc/limits", operation_id = "getKycLimits", tag = "kyc", security(("bearer" = [])), responses(
    (status = 200, body = LimitsView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn get_limits(
    State(state): State<Arc<AppState>>,
    principal: Principal,
) -> ApiResult<Json<LimitsView>> {
    let currencies = kyc::get_limits(&state.core, &principal).await?;
    Ok(Json(LimitsView {
        object: "kyc_limits",
        currencies: currencies.into_iter().map(Into::into).collect(),
    }))
}

/// Replace one currency's KYC limits (every tier at once). Validated as a whole: figures are
/// non-negative, daily ≤ monthly, and a higher tier is never stricter than a lower one.
#[utoipa::path(put, path = "/v1/kyc/limits", operation_id = "setKycLimits", tag = "kyc", security(("bearer" = [])), request_body = PutLimitsRequest, responses(
    (status = 200, body = CurrencyLimitsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn put_limits(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<PutLimitsRequest>,
) -> ApiResult<Recorded<Json<CurrencyLimitsView>>> {
    let tiers = body
        .tiers
        .iter()
        .map(|t| {
            (
                t.tier,
                TierLimits {
                    max_single_transfer: t.max_single_transfer,
                    daily_outgoing: t.daily_outgoing,
                    monthly_outgoing: t.monthly_outgoing,
                    max_balance: t.max_balance,
                },
            )
        })
        .collect();
    let c = kyc::put_limits(&state.core, &meta, &principal, &body.currency, tiers).await?;
    Ok(Recorded(StatusCode::OK, Json(c.into())))
}

/// What the submission handler parses: [`SubmitRequest`], except that each document's content
/// is decoded from base64 as it is parsed, straight from the body's buffer (the text is never
/// copied into a `String`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParsedSubmission {
    requested_tier: i64,
    documents: Vec<ParsedDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParsedDocument {
    document_type: String,
    content_type: String,
    content: DecodedContent,
}

struct DecodedContent(UploadedContent);

impl<'de> Deserialize<'de> for DecodedContent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Base64;
        impl serde::de::Visitor<'_> for Base64 {
            type Value = DecodedContent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            // The text is borrowed from the body's buffer: decoded without a copy.
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DecodedContent, E> {
                Ok(DecodedContent(UploadedContent::from_base64(v)))
            }
        }
        d.deserialize_str(Base64)
    }
}

/// Submit identity documents for a higher tier (the customer itself, or staff on its behalf).
/// The cheap refusals come before the body is read: the caller's permission (the route), its
/// credential's uploads in progress (429 `too_many_uploads` beyond 2), the customer (404, 422
/// `customer_erased` or `processing_restricted`, 409 `kyc_submission_open`). Then, with at most
/// `MAX_UPLOADS_IN_PROCESS` uploads read at once per process (the others wait, unread), the
/// body is read into one buffer and parsed in place, each document decoded as it is parsed.
#[utoipa::path(post, path = "/v1/customers/{id}/kyc/submissions", operation_id = "createKycSubmission", tag = "kyc", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)")), request_body = SubmitRequest, responses(
    (status = 201, body = SubmissionBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
))]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Recorded<Json<SubmissionBody>>> {
    require_json(&headers)?;
    let core = &state.core;
    let mut slot = kyc::begin_upload(core, &principal)?;
    let customer = kyc::check_submission_allowed(core, &principal, &id).await?;
    slot.admitted().await?;
    let parsed: ParsedSubmission =
        large_json::read_json(&headers, body, crate::domain::kyc::SUBMISSION_BODY_LIMIT).await?;
    let docs = parsed
        .documents
        .into_iter()
        .map(|d| DocumentInput {
            document_type: d.document_type,
            content_type: d.content_type,
            content: d.content.0,
        })
        .collect();
    let s = kyc::submit(
        core,
        &meta,
        &principal,
        customer,
        parsed.requested_tier,
        docs,
    )
    .await?;
    drop(slot);
    Ok(Recorded(StatusCode::CREATED, Json(s.into())))
}

/// A customer's current tier and full verification history (documents by metadata only).
#[utoipa::path(get, path = "/v1/customers/{id}/kyc", operation_id = "getCustomerKyc", tag = "kyc", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)")), responses(
    (status = 200, body = CustomerKycView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn customer_kyc(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<CustomerKycView>> {
    let k = kyc::customer_kyc(&state.core, &principal, &id).await?;
    Ok(Json(CustomerKycView {
        object: "customer_kyc",
        customer_id: k.customer_id,
        tier: k.tier,
        history: k.history.into_iter().map(Into::into).collect(),
    }))
}

/// Verification submissions, newest first; `status=submitted` is the compliance queue.
#[utoipa::path(get, path = "/v1/kyc/submissions", operation_id = "listKycSubmissions", tag = "kyc", security(("bearer" = [])), params(SubmissionListQuery), responses(
    (status = 200, body = List<SubmissionBody>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list_submissions(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<SubmissionListQuery>,
) -> ApiResult<Json<List<SubmissionBody>>> {
    let page = page(q.limit, q.starting_after, |c| {
        KycSubmissionId::parse(c).is_some()
    })?;
    let listed = kyc::list_submissions(&state.core, &principal, q.status.as_deref(), &page).await?;
    Ok(Json(List::from(listed, SubmissionBody::from)))
}

/// Approve a submission with the tier it grants (COMPLIANCE_OFFICER; once).
#[utoipa::path(post, path = "/v1/kyc/submissions/{id}/approve", operation_id = "approveKycSubmission", tag = "kyc", security(("bearer" = [])), params(("id" = String, Path, description = "Submission id (`kyc_…`)")), request_body = ApproveRequest, responses(
    (status = 200, body = SubmissionBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn approve(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApproveRequest>,
) -> ApiResult<Recorded<Json<SubmissionBody>>> {
    let s = kyc::decide(
        &state.core,
        &meta,
        &principal,
        &id,
        Decision::Approve {
            tier: body.tier,
            note: body.note,
        },
    )
    .await?;
    Ok(Recorded(StatusCode::OK, Json(s.into())))
}

/// Reject a submission with a reason code and an optional staff-only note; the customer keeps
/// its tier and is shown a customer-facing code only (COMPLIANCE_OFFICER; once).
#[utoipa::path(post, path = "/v1/kyc/submissions/{id}/reject", operation_id = "rejectKycSubmission", tag = "kyc", security(("bearer" = [])), params(("id" = String, Path, description = "Submission id (`kyc_…`)")), request_body = RejectRequest, responses(
    (status = 200, body = SubmissionBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn reject(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectRequest>,
) -> ApiResult<Recorded<Json<SubmissionBody>>> {
    let s = kyc::decide(
        &state.core,
        &meta,
        &principal,
        &id,
        Decision::Reject {
            reason: body.reason,
            note: body.note,
        },
    )
    .await?;
    Ok(Recorded(StatusCode::OK, Json(s.into())))
}

/// Download a document's content (COMPLIANCE_OFFICER). Audited as a read of personal data.
#[utoipa::path(get, path = "/v1/kyc/documents/{id}/content", operation_id = "downloadKycDocument", tag = "kyc", security(("bearer" = [])), params(("id" = String, Path, description = "Document id (`kyd_…`)")), responses(
    (status = 200, description = "The document's bytes, with its content type", content_type = "application/octet-stream"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn download(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let d = kyc::download(&state.core, &meta, &principal, &id).await?;
    let ext = match d.meta.content_type.as_str() {
        "application/pdf" => "pdf",
        "image/png" => "png",
        _ => "jpg",
    };
    let mut resp = d.content.to_vec().into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&d.meta.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.{ext}\"", d.meta.id)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&d.meta.sha256) {
        headers.insert("x-content-sha256", v);
    }
    Ok(resp)
}
