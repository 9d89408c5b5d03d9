//! Tenants (platform admins only).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::Recorded;
use crate::http::AppState;
use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::views::{CreateTenantRequest, List, ListQuery, TenantView, page};
use crate::ids::TenantId;
use crate::service::tenants::{self, CreateTenant};
use crate::service::{Principal, RequestMeta};

/// Create a tenant with its first MANAGER.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), request_body = CreateTenantRequest, responses(
    (status = 201, body = TenantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, description = "Slug taken", body = ErrorBody),
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
        manager_password: body.manager.password,
        access_token_ttl_seconds: body.access_token_ttl_seconds,
    };
    let (tenant, _manager) = tenants::create(&state.core, &meta, &principal, input).await?;
    Ok(Recorded(StatusCode::CREATED, Json(tenant.into())))
}

/// List tenants, newest first.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), params(ListQuery), responses(
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
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id (`ten_…`)")), responses(
    (status = 200, body = TenantView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantView>> {
    Ok(Json(tenants::get(&state.core, &id).await?.into()))
}

/// Suspend a tenant: its users cannot sign in and every session ends at once.
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id")), responses(
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
#[utoipa::path(post, path = "/v1/tenants/{id}/reactivate", tag = "tenants", security(("bearer" = [])), params(("id" = String, Path, description = "Tenant id")), responses(
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
