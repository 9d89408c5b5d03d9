//! API tokens: create (secret shown once), list, rotate, revoke.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Recorded;
use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::state::AppState;
use crate::http::views::{List, ListQuery, page};
use crate::service::api_tokens::{self, CreateInput, Issued, TokenView};
use crate::service::{Principal, RequestMeta};

/// A new API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    /// 1 to 100 characters, for people reading the list.
    pub name: String,
    /// Permission names (`accounts:read`, `transfers:create`, ...), each no wider than the
    /// creator holds it.
    pub scopes: Vec<String>,
    /// `24h`, `30d`, `90d`, `180d` or `365d`.
    pub expires_in: String,
    /// CIDRs the token may be used from (empty or absent: any address the tenant allows).
    #[serde(default)]
    pub allowed_ips: Vec<String>,
}

/// A rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateApiTokenRequest {
    /// How long the previous secret keeps working, 0 to 86400 seconds (default: the server's
    /// `api_token_rotation_overlap_seconds`).
    pub overlap_seconds: Option<i64>,
}

/// An API token (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiTokenView {
    /// Always `api_token`.
    pub object: &'static str,
    pub id: String,
    pub name: String,
    /// The user the token acts for (its creator).
    pub user_id: String,
    pub scopes: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub created_at: String,
    pub expires_at: String,
    /// Recorded at most once a minute.
    pub last_used_at: Option<String>,
    pub rotated_at: Option<String>,
    /// Expires within 7 days: rotate or replace it.
    pub expiring_soon: bool,
}

impl From<TokenView> for ApiTokenView {
    fn from(t: TokenView) -> Self {
        Self {
            object: "api_token",
            id: t.id,
            name: t.name,
            user_id: t.user_id,
            scopes: t.scopes,
            allowed_ips: t.allowed_ips,
            created_at: t.created_at.to_rfc3339(),
            expires_at: t.expires_at.to_rfc3339(),
            last_used_at: t.last_used_at.map(|t| t.to_rfc3339()),
            rotated_at: t.rotated_at.map(|t| t.to_rfc3339()),
            expiring_soon: t.expiring_soon,
        }
    }
}

/// A token with its new secret and signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct IssuedApiTokenView {
    #[serde(flatten)]
    pub token: ApiTokenView,
    /// `kasho_…`: use as `Authorization: Bearer <secret>`. Kasho keeps only a keyed hash;
    /// it cannot be shown again.
    pub secret: String,
    /// `kasho_sig_…`: the HMAC key of signed requests made with this secret (docs/API.md,
    /// Request signing); never sent on a request. Kasho keeps it sealed; it cannot be shown
    /// again.
    pub signing_secret: String,
    /// After a rotation: until when the previous secret keeps working.
    pub previous_secret_valid_until: Option<String>,
}

impl std::fmt::Debug for IssuedApiTokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedApiTokenView")
            .field("token", &self.token)
            .field("secret", &"[REDACTED]")
            .field("signing_secret", &"[REDACTED]")
            .field(
                "previous_secret_valid_until",
                &self.previous_secret_valid_until,
            )
            .finish()
    }
}

impl From<Issued> for IssuedApiTokenView {
    fn from(i: Issued) -> Self {
        Self {
            secret: i.secret.expose_secret().to_owned(),
            signing_secret: i.signing_secret.expose_secret().to_owned(),
            previous_secret_valid_until: i.previous_valid_until.map(|t| t.to_rfc3339()),
            token: i.token.into(),
        }
    }
}

fn token_id_ok(s: &str) -> bool {
    s.strip_prefix("atk_")
        .is_some_and(|r| r.len() == 32 && r.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Create an API token acting for the caller within `scopes` (needs step-up).
#[utoipa::path(post, path = "/v1/api-tokens", operation_id = "createApiToken", tag = "api-tokens", security(("bearer" = [])), request_body = CreateApiTokenRequest, responses(
    (status = 201, body = IssuedApiTokenView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, description = "Missing permission, a scope the caller does not hold (`scope_not_held`), or `step_up_required`", body = ErrorBody),
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<CreateApiTokenRequest>,
) -> ApiResult<Recorded<Json<IssuedApiTokenView>>> {
    let input = CreateInput {
        name: body.name,
        scopes: body.scopes,
        expires_in: body.expires_in,
        allowed_ips: body.allowed_ips,
    };
    let issued = api_tokens::create(&state.core, &meta, &principal, input).await?;
    Ok(Recorded(StatusCode::CREATED, Json(issued.into())))
}

/// List live API tokens, newest first: a MANAGER sees the tenant's, others their own.
#[utoipa::path(get, path = "/v1/api-tokens", operation_id = "listApiTokens", tag = "api-tokens", security(("bearer" = [])), params(ListQuery), responses(
    (status = 200, body = List<ApiTokenView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<List<ApiTokenView>>> {
    let page = page(q.limit, q.starting_after, token_id_ok)?;
    let listed = api_tokens::list(&state.core, &principal, &page).await?;
    Ok(Json(List::from(listed, ApiTokenView::from)))
}

/// Revoke an API token: every secret of it stops working at once.
#[utoipa::path(delete, path = "/v1/api-tokens/{id}", operation_id = "revokeApiToken", tag = "api-tokens", security(("bearer" = [])), params(("id" = String, Path, description = "API token id (`atk_…`)")), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<()>> {
    api_tokens::revoke(&state.core, &meta, &principal, &id).await?;
    Ok(Recorded(StatusCode::NO_CONTENT, ()))
}

/// Rotate one of the caller's own tokens (needs step-up): a new secret, shown once; the
/// previous one keeps working for the overlap.
#[utoipa::path(post, path = "/v1/api-tokens/{id}/rotate", operation_id = "rotateApiToken", tag = "api-tokens", security(("bearer" = [])), params(("id" = String, Path, description = "API token id (`atk_…`)")), request_body = RotateApiTokenRequest, responses(
    (status = 200, body = IssuedApiTokenView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, description = "Missing permission, `not_token_owner` or `step_up_required`", body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Recorded<Json<IssuedApiTokenView>>> {
    // The body is optional: none (or an empty one) takes the configured overlap.
    let empty = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_none()
        && req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    let overlap = if empty {
        None
    } else {
        let ApiJson(b) =
            <ApiJson<RotateApiTokenRequest> as axum::extract::FromRequest<()>>::from_request(
                req,
                &(),
            )
            .await?;
        b.overlap_seconds
    };
    let issued = api_tokens::rotate(&state.core, &meta, &principal, &id, overlap).await?;
    Ok(Recorded(StatusCode::OK, Json(issued.into())))
}
