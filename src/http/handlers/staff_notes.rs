//! Staff-only notes: the sealed free text attached to freezes, restrictions and KYC decisions
//! (see `service::staff_notes`). Readable with `staff_notes:read` only; every read is audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clock::Timestamp;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiQuery;
use crate::http::state::AppState;
use crate::http::views::{List, page};
use crate::ids::{AccountId, CustomerId, KycSubmissionId, StaffNoteId};
use crate::service::staff_notes::{self, OpenedNote};
use crate::service::{Principal, RequestMeta};

/// A staff-only note.
#[derive(Serialize, ToSchema)]
pub struct StaffNoteView {
    /// Always `staff_note`.
    pub object: &'static str,
    pub id: String,
    /// `account`, `customer` or `kyc_submission`.
    pub target_type: String,
    pub target_id: String,
    /// The audit action the note belongs to, e.g. `account.freeze`.
    pub action: String,
    /// The action's reason code.
    pub reason_code: String,
    /// The note's text.
    pub note: String,
    pub created_by: String,
    pub created_at: String,
}

impl From<OpenedNote> for StaffNoteView {
    fn from(n: OpenedNote) -> Self {
        let r = n.record;
        Self {
            object: "staff_note",
            note: n.text.to_string(),
            id: r.id,
            target_type: r.target_type,
            target_id: r.target_id,
            action: r.action,
            reason_code: r.reason_code,
            created_by: r.created_by,
            created_at: Timestamp::from_micros(r.created_at).to_rfc3339(),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StaffNoteQuery {
    /// The account (`acc_…`), customer (`cus_…`) or KYC submission (`kyc_…`) the notes are about.
    pub target_id: String,
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The id of the last note of the previous page.
    pub starting_after: Option<String>,
}

/// Never cached: the answer carries notes staff wrote about a person.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The staff notes about an account, a customer or a KYC submission, oldest first
/// (`staff_notes:read`, COMPLIANCE_OFFICER). Audited as `staff_note.list`.
#[utoipa::path(get, path = "/v1/staff-notes", operation_id = "listStaffNotes", tag = "compliance", security(("bearer" = [])), params(StaffNoteQuery), responses(
    (status = 200, body = List<StaffNoteView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiQuery(q): ApiQuery<StaffNoteQuery>,
) -> ApiResult<Response> {
    let t = q.target_id.as_str();
    if AccountId::parse(t).is_none()
        && CustomerId::parse(t).is_none()
        && KycSubmissionId::parse(t).is_none()
    {
        return Err(ApiError::invalid(
            "parameter_invalid",
            Some("target_id".into()),
            "must be an account (acc_…), customer (cus_…) or KYC submission (kyc_…) id",
        ));
    }
    let page = page(q.limit, q.starting_after, |c| {
        StaffNoteId::parse(c).is_some()
    })?;
    let listed = staff_notes::list(&state.core, &meta, &principal, t, &page).await?;
    Ok(no_store(
        Json(List::from(listed, StaffNoteView::from)).into_response(),
    ))
}

/// One staff note (`staff_notes:read`, COMPLIANCE_OFFICER). Audited as `staff_note.read`.
#[utoipa::path(get, path = "/v1/staff-notes/{id}", operation_id = "getStaffNote", tag = "compliance", security(("bearer" = [])), params(("id" = String, Path, description = "Note id (`stn_…`)")), responses(
    (status = 200, body = StaffNoteView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let n = staff_notes::get(&state.core, &meta, &principal, &id).await?;
    Ok(no_store(Json(StaffNoteView::from(n)).into_response()))
}
