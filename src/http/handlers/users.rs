//! Users of the caller's tenant.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::Recorded;
use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::state::AppState;
use crate::http::views::{CreateUserRequest, List, ListQuery, SetRolesRequest, UserView, page};
use crate::ids::UserId;
use crate::service::users::{self, CreateUser};
use crate::service::{Principal, RequestMeta};

/// Invite a user into the caller's tenant: it answers 201 with the user in status `invited`
/// and emails a link (valid 72 hours) with which the person chooses their own password. The
/// roles may not carry a permission the caller lacks, nor hold a forbidden pair (422
/// `forbidden_role_pair`); inviting a staff role (anything but CUSTOMER) needs step-up, so API
/// tokens cannot do it.
#[utoipa::path(post, path = "/v1/users", operation_id = "createUser", tag = "users", security(("bearer" = [])), request_body = CreateUserRequest, responses(
    (status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, description = "Not permitted, or step-up required", body = ErrorBody), (status = 409, description = "Email taken", body = ErrorBody),
    (status = 422, description = "A forbidden pair of roles", body = ErrorBody),
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> ApiResult<Recorded<Json<UserView>>> {
    let input = CreateUser {
        email: body.email,
        roles: body.roles,
    };
    let user = users::create(&state.core, &meta, &principal, input).await?;
    Ok(Recorded(StatusCode::CREATED, Json(user.into())))
}

/// List users of the caller's tenant, newest first (a CUSTOMER sees only itself).
#[utoipa::path(get, path = "/v1/users", operation_id = "listUsers", tag = "users", security(("bearer" = [])), params(ListQuery), responses(
    (status = 200, body = List<UserView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<List<UserView>>> {
    let page = page(q.limit, q.starting_after, |c| UserId::parse(c).is_some())?;
    let listed = users::list(&state.core, &principal, &page).await?;
    Ok(Json(List::from(listed, UserView::from)))
}

/// Get one user. Another tenant's user answers 404, as a missing one does.
#[utoipa::path(get, path = "/v1/users/{id}", operation_id = "getUser", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "User id (`usr_…`)")), responses(
    (status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(users::get(&state.core, &principal, &id).await?.into()))
}

/// Disable a user: they cannot sign in and their sessions end at once.
#[utoipa::path(post, path = "/v1/users/{id}/disable", operation_id = "disableUser", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "User id")), responses(
    (status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn disable(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<UserView>>> {
    let u = users::set_disabled(&state.core, &meta, &principal, &id, true).await?;
    Ok(Recorded(StatusCode::OK, Json(u.into())))
}

/// Re-enable a disabled user.
#[utoipa::path(post, path = "/v1/users/{id}/enable", operation_id = "enableUser", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "User id")), responses(
    (status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn enable(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<UserView>>> {
    let u = users::set_disabled(&state.core, &meta, &principal, &id, false).await?;
    Ok(Recorded(StatusCode::OK, Json(u.into())))
}

/// Reset another user's second factor (needs step-up): their authenticator and recovery codes
/// are removed and their sessions end; they enrol again at the next sign-in.
#[utoipa::path(post, path = "/v1/users/{id}/mfa/reset", operation_id = "resetUserMfa", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "User id")), responses(
    (status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn reset_mfa(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<UserView>>> {
    let u = users::reset_mfa(&state.core, &meta, &principal, &id).await?;
    Ok(Recorded(StatusCode::OK, Json(u.into())))
}

/// Replace a user's roles. Takes effect on the user's next request.
#[utoipa::path(put, path = "/v1/users/{id}/roles", operation_id = "setUserRoles", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "User id")), request_body = SetRolesRequest, responses(
    (status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn set_roles(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetRolesRequest>,
) -> ApiResult<Recorded<Json<UserView>>> {
    let u = users::set_roles(&state.core, &meta, &principal, &id, &body.roles).await?;
    Ok(Recorded(StatusCode::OK, Json(u.into())))
}

/// Send an invited user a new invitation link (72 hours); its earlier links stop working.
/// Only for a user still `invited` (409 `user_not_invited` otherwise); needs step-up when the
/// user holds a staff role.
#[utoipa::path(post, path = "/v1/users/{id}/reinvite", operation_id = "reinviteUser", tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "User id")), responses(
    (status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn reinvite(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<UserView>>> {
    let u = crate::service::invitations::reinvite(&state.core, &meta, &principal, &id).await?;
    Ok(Recorded(StatusCode::OK, Json(u.into())))
}
