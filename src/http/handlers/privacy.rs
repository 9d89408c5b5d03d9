//! Data-subject rights: the export of everything held about a customer, its erasure by
//! crypto-shredding, and the restriction of processing (see `service::privacy`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Recorded;
use super::ledger::{AccountView, HoldView, TransferView, transfer_view};
use crate::clock::Timestamp;
use crate::http::context::AuditRecorded;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::http::state::AppState;
use crate::http::views::AuditEventView;
use crate::service::privacy::{self, CustomerExport};
use crate::service::{Principal, RequestMeta};
use crate::store::CustomerPrivacyRecord;

fn ts(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}

// ---------------------------------------------------------------- wire types

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// Why (GDPR Art. 17(1)): `data_subject_request`, `consent_withdrawn`,
    /// `no_longer_necessary`, `objection`, `unlawful_processing` or `legal_obligation`.
    pub reason: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestrictionRequest {
    /// Why. To restrict (Art. 18(1)): `accuracy_contested`, `unlawful_processing`,
    /// `legal_claims`, `objection_pending` or `data_subject_request`. To lift (Art. 18(3)):
    /// `accuracy_verified`, `objection_resolved`, `legal_claims_concluded`,
    /// `data_subject_request` or `restricted_in_error`.
    pub reason: String,
    /// Free text for staff, 1 to 2000 characters: sealed, readable with `staff_notes:read` only,
    /// never shown to the customer.
    pub note: Option<String>,
}

/// The customer record as the export shows it.
#[derive(Serialize, ToSchema)]
pub struct ExportedCustomer {
    pub id: String,
    /// `active` or `erased`.
    pub status: String,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub erased_at: Option<String>,
    pub external_ref: Option<String>,
    pub user_id: Option<String>,
    pub processing_restricted: bool,
    /// The personal data held, opened (`null` when none is held, e.g. after erasure).
    #[schema(value_type = Option<Object>)]
    pub profile: Option<serde_json::Value>,
}

/// Everything held about a customer, machine-readable.
#[derive(Serialize, ToSchema)]
pub struct CustomerExportView {
    /// Always `customer_export`.
    pub object: &'static str,
    pub generated_at: String,
    pub tenant_id: String,
    pub customer: ExportedCustomer,
    pub accounts: Vec<AccountView>,
    pub holds: Vec<HoldView>,
    /// Every transfer touching one of the customer's accounts, details opened; `balances`
    /// shows only the customer's own accounts.
    pub transfers: Vec<TransferView>,
    /// Audit records about the customer, its accounts, holds, transfers and linked user, and
    /// those its linked user made, oldest first. The IP address is shown only on records the
    /// customer's own user made.
    pub audit_events: Vec<AuditEventView>,
    /// The KYC tier and history (documents as metadata; download them through
    /// `/v1/kyc/documents/{id}/content`).
    pub kyc: crate::http::handlers::kyc::CustomerKycView,
    /// Sections cut at the export's limit of items per section (empty when complete).
    pub truncated: Vec<String>,
    /// Most items per section.
    pub max_items_per_section: usize,
}

impl CustomerExportView {
    fn from(tenant: &str, e: CustomerExport) -> Self {
        let own: std::collections::HashSet<String> =
            e.accounts.iter().map(|a| a.id.clone()).collect();
        let subject = e.subject_user.clone();
        Self {
            object: "customer_export",
            generated_at: e.generated_at.to_rfc3339(),
            tenant_id: tenant.to_owned(),
            customer: ExportedCustomer {
                id: e.customer.id,
                status: e.customer.status,
                created_at: ts(e.customer.created_at),
                updated_at: e.customer.updated_at.map(ts),
                erased_at: e.customer.erased_at.map(ts),
                external_ref: e.customer.external_ref,
                user_id: e.customer.user_id,
                processing_restricted: e.customer.processing_restricted != 0,
                profile: e.profile.map(|p| p.0),
            },
            transfers: e
                .transfers
                .iter()
                .map(|p| transfer_view(p, false, |a| own.contains(a)))
                .collect(),
            accounts: e.accounts.into_iter().map(AccountView::from).collect(),
            holds: e.holds.into_iter().map(HoldView::from).collect(),
            audit_events: e
                .audit_events
                .into_iter()
                .map(|r| {
                    let by_subject = subject.is_some() && r.actor_id == subject;
                    let mut v = AuditEventView::from(r);
                    if !by_subject {
                        // Staff members' addresses are their personal data, not the subject's.
                        v.ip = None;
                    }
                    v
                })
                .collect(),
            kyc: crate::http::handlers::kyc::CustomerKycView {
                object: "customer_kyc",
                customer_id: e.kyc.customer_id,
                tier: e.kyc.tier,
                history: e.kyc.history.into_iter().map(Into::into).collect(),
            },
            truncated: e.truncated.into_iter().map(str::to_owned).collect(),
            max_items_per_section: privacy::MAX_EXPORT_ITEMS,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ErasureView {
    /// Always `customer_erasure`.
    pub object: &'static str,
    pub customer_id: String,
    /// `erased`.
    pub status: &'static str,
    pub erased_at: String,
    /// The customer's accounts closed by the erasure.
    pub accounts_closed: Vec<String>,
    /// The linked user, now disabled, signed out and pseudonymised (a customer-only login).
    pub user_disabled: Option<String>,
    /// The linked user when it is also staff: unlinked, its CUSTOMER role removed (its other
    /// roles, email and password stay; its sessions end).
    pub user_unlinked: Option<String>,
    /// Data key versions whose key material was destroyed.
    pub keys_destroyed: u64,
    /// Blind-index rows deleted.
    pub lookups_deleted: u64,
}

#[derive(Serialize, ToSchema)]
pub struct RestrictionView {
    /// Always `customer_restriction`.
    pub object: &'static str,
    pub customer_id: String,
    pub processing_restricted: bool,
    pub updated_at: Option<String>,
}

impl From<CustomerPrivacyRecord> for RestrictionView {
    fn from(c: CustomerPrivacyRecord) -> Self {
        Self {
            object: "customer_restriction",
            customer_id: c.id,
            processing_restricted: c.processing_restricted != 0,
            updated_at: c.updated_at.map(ts),
        }
    }
}

// ---------------------------------------------------------------- handlers

/// Export everything held about a customer (GDPR access and portability). A CUSTOMER may export
/// only itself. Sent as an attachment, never cached.
#[utoipa::path(get, path = "/v1/customers/{id}/export", operation_id = "exportCustomerData", tag = "privacy", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)")), responses(
    (status = 200, body = CustomerExportView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn export(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let bundle = privacy::export(&state.core, &meta, &principal, &id).await?;
    let tenant = principal.tenant()?.to_string();
    let view = CustomerExportView::from(&tenant, bundle);
    let disposition = format!(
        "attachment; filename=\"customer-export-{}.json\"",
        view.customer.id
    );
    let mut resp = Recorded(StatusCode::OK, Json(view)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Erase a customer by crypto-shredding: refused (422 `erasure_blocked`, nothing changed)
/// while any of its accounts holds a balance, pending debits or credits, or an active hold;
/// otherwise closes its accounts, deletes its blind indexes, destroys its data key and
/// pseudonymises its login. A login that is also staff is only unlinked and loses its CUSTOMER
/// role, and only a caller who may manage that user can erase (403
/// `linked_user_not_manageable` otherwise). Ledger entries stay under the pseudonymous ids. A
/// second request answers 409 `customer_erased`.
#[utoipa::path(post, path = "/v1/customers/{id}/erase", operation_id = "eraseCustomer", tag = "privacy", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)")), request_body = ErasureRequest, responses(
    (status = 200, body = ErasureView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn erase(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ErasureRequest>,
) -> ApiResult<Response> {
    let r = match privacy::erase(&state.core, &meta, &principal, &id, &body.reason).await {
        Ok(r) => r,
        Err(e) if e.code() == privacy::ERASURE_BLOCKED => {
            // Already audited against the customer by the service.
            let mut resp = ApiError::from(e).into_response();
            resp.extensions_mut().insert(AuditRecorded);
            return Ok(resp);
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Recorded(
        StatusCode::OK,
        Json(ErasureView {
            object: "customer_erasure",
            customer_id: r.customer_id,
            status: "erased",
            erased_at: r.erased_at.to_rfc3339(),
            accounts_closed: r.accounts_closed,
            user_disabled: r.user_disabled,
            user_unlinked: r.user_unlinked,
            keys_destroyed: r.keys_destroyed,
            lookups_deleted: r.lookups_deleted,
        }),
    )
    .into_response())
}

/// Restrict the processing of a customer's data: until lifted, no new money movement (transfer,
/// deposit, withdrawal, hold, capture) may debit or credit its accounts (422
/// `processing_restricted`); reversals, as corrections, stay allowed.
#[utoipa::path(post, path = "/v1/customers/{id}/restrict", operation_id = "restrictCustomer", tag = "privacy", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)")), request_body = RestrictionRequest, responses(
    (status = 200, body = RestrictionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn restrict(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RestrictionRequest>,
) -> ApiResult<Recorded<Json<RestrictionView>>> {
    let c = privacy::set_restriction(
        &state.core,
        &meta,
        &principal,
        &id,
        true,
        &body.reason,
        body.note.as_deref(),
    )
    .await?;
    Ok(Recorded(StatusCode::OK, Json(c.into())))
}

/// Lift the restriction of processing of a customer's data.
#[utoipa::path(post, path = "/v1/customers/{id}/unrestrict", operation_id = "unrestrictCustomer", tag = "privacy", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)")), request_body = RestrictionRequest, responses(
    (status = 200, body = RestrictionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn unrestrict(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RestrictionRequest>,
) -> ApiResult<Recorded<Json<RestrictionView>>> {
    let c = privacy::set_restriction(
        &state.core,
        &meta,
        &principal,
        &id,
        false,
        &body.reason,
        body.note.as_deref(),
    )
    .await?;
    Ok(Recorded(StatusCode::OK, Json(c.into())))
}
