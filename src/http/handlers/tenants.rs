//! Tenants (platform admins only).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::Recorded;
use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::state::AppState;
use crate::http::views::{
    BreakGlassRequestBody, BreakGlassView, CreateTenantRequest, List, ListQuery, TenantView, page,
};
use crate::ids::{BreakGlassId, TenantId};
use crate::service::break_glass;
use crate::service::tenants::{self, CreateTenant};
use crate::service::{Principal, RequestMeta};

/// Create a tenant with its first MANAGER, who is invited by email (status `invited`; it
/// chooses its own password). Needs step-up.
#[utoipa::path(post, path = "/v1/tenants", operation_id = "createTenant", tag = "tenants", security(("bearer" = [])), request_body = CreateTenantRequest, responses(
    (status = 201, body = TenantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, description = "Not permitted, or step-up required", body = ErrorBody), (status = 409, description = "Slug taken", body = ErrorBody),
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<CreateTenantRequest>,
) -> ApiResult<Recorded<Json<TenantView>>> {
    let input = CreateTenant {
        slug: body.slug,
        name: body.name,
        currencies: body.currencies,
        manager_email: body.manager.email,
        access_token_ttl_seconds: body.access_token_ttl_seconds,
    };
    let (tenant, _manager) = tenants::create(&state.core, &meta, &principal, input).await?;
    Ok(Recorded(StatusCode::CREATED, Json(tenant.into())))
}

/// List tenants, newest first.
#[utoipa::path(get, path = "/v1/tenants", operation_id = "listTenants", tag = "tenants", security(("bearer" = [])), params(ListQuery), responses(
    (status = 200, body = List<TenantView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<List<TenantView>>> {
    let page = page(q.limit, q.starting_after, |c| TenantId::parse(c).is_some())?;
    let listed = tenants::list(&state.core, &page).await?;
    Ok(Json(List::from(listed, TenantView::from)))
}

/// Get one tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", operation_id = "getTenant", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id (`ten_…`)")), responses(
    (status = 200, body = TenantView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantView>> {
    Ok(Json(tenants::get(&state.core, &id).await?.into()))
}

/// Suspend a tenant: its users cannot sign in and every session ends at once.
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", operation_id = "suspendTenant", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id")), responses(
    (status = 200, body = TenantView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn suspend(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<TenantView>>> {
    let t = tenants::set_suspended(&state.core, &meta, &principal, &id, true).await?;
    Ok(Recorded(StatusCode::OK, Json(t.into())))
}

/// Reactivate a suspended tenant (its users sign in again).
#[utoipa::path(post, path = "/v1/tenants/{id}/reactivate", operation_id = "reactivateTenant", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id")), responses(
    (status = 200, body = TenantView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn reactivate(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<TenantView>>> {
    let t = tenants::set_suspended(&state.core, &meta, &principal, &id, false).await?;
    Ok(Recorded(StatusCode::OK, Json(t.into())))
}

/// Break-glass, step 1: ask for an invitation of a new MANAGER for the tenant (its managers
/// lost their access). A second platform admin must approve within 24 hours; a platform with a
/// single admin cannot use this (409 `break_glass_needs_two_admins`). Needs step-up.
#[utoipa::path(post, path = "/v1/tenants/{id}/break-glass", operation_id = "requestBreakGlass", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id")), request_body = BreakGlassRequestBody, responses(
    (status = 201, body = BreakGlassView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn break_glass_request(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BreakGlassRequestBody>,
) -> ApiResult<Recorded<Json<BreakGlassView>>> {
    let r = break_glass::request(&state.core, &meta, &principal, &id, &body.email).await?;
    let now = state.core.clock.now();
    Ok(Recorded(
        StatusCode::CREATED,
        Json(BreakGlassView::new(r, now)),
    ))
}

/// The tenant's break-glass requests, newest first.
#[utoipa::path(get, path = "/v1/tenants/{id}/break-glass", operation_id = "listBreakGlassRequests", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id"), ListQuery), responses(
    (status = 200, body = List<BreakGlassView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn break_glass_list(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<List<BreakGlassView>>> {
    let page = page(q.limit, q.starting_after, |c| {
        BreakGlassId::parse(c).is_some()
    })?;
    let listed = break_glass::list(&state.core, &id, &page).await?;
    let now = state.core.clock.now();
    Ok(Json(List::from(listed, |r| BreakGlassView::new(r, now))))
}

/// Break-glass, step 2: a second platform admin (never the requester: 403
/// `break_glass_same_admin`) approves a pending request within 24 hours (409
/// `break_glass_expired` after); the new MANAGER is invited by email. Needs step-up.
#[utoipa::path(post, path = "/v1/tenants/{id}/break-glass/{request_id}/approve", operation_id = "approveBreakGlassRequest", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id"), ("request_id" = String, Path, description = "Break-glass request id (`brk_…`)")), responses(
    (status = 200, body = BreakGlassView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn break_glass_approve(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path((id, request_id)): Path<(String, String)>,
) -> ApiResult<Recorded<Json<BreakGlassView>>> {
    let r = break_glass::approve(&state.core, &meta, &principal, &id, &request_id).await?;
    let now = state.core.clock.now();
    Ok(Recorded(StatusCode::OK, Json(BreakGlassView::new(r, now))))
}
