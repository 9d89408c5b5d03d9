//! The audit log of the caller's tenant.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::ApiQuery;
use crate::http::state::AppState;
use crate::http::views::{AuditEventView, AuditQuery, List, page, time_param};
use crate::ids::AuditEventId;
use crate::service::{Principal, audit};
use crate::store::AuditFilter;

/// Audit events, newest first, filterable by actor, action and time.
#[utoipa::path(get, path = "/v1/audit-events", operation_id = "listAuditEvents", tag = "audit", security(("bearer" = [])), params(AuditQuery), responses(
    (status = 200, body = List<AuditEventView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<List<AuditEventView>>> {
    let page = page(q.limit, q.starting_after, |c| {
        AuditEventId::parse(c).is_some()
    })?;
    let filter = AuditFilter {
        actor_id: q.actor_id,
        action: q.action,
        occurred_after: time_param("occurred_after", q.occurred_after)?,
        occurred_before: time_param("occurred_before", q.occurred_before)?,
    };
    let listed = audit::list(&state.core, &principal, &filter, &page).await?;
    Ok(Json(List::from(listed, AuditEventView::from)))
}
