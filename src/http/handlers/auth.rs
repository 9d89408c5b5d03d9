//! Login, refresh, logout and `/v1/me`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secrecy::ExposeSecret;

use super::Recorded;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::http::state::AppState;
use crate::http::views::{
    LoginRequest, LoginResponse, MeView, MfaChallengeView, PermissionView, RefreshRequest,
    TokenResponse,
};
use crate::service::auth::{self, LoginInput, LoginResult, TokenPair};
use crate::service::{Credential, Principal, RequestMeta};

pub(crate) fn render(pair: TokenPair) -> Json<TokenResponse> {
    Json(tokens(pair))
}

fn tokens(pair: TokenPair) -> TokenResponse {
    TokenResponse {
        access_token: pair.access_token,
        token_type: "Bearer",
        expires_in: pair.expires_in,
        refresh_token: pair.refresh_token.expose_secret().to_owned(),
        refresh_expires_in: pair.refresh_expires_in,
    }
}

/// Sign in with email and password. Unknown tenants, unknown emails and wrong passwords all
/// answer 401 `invalid_credentials`, at the same cost; every attempt is counted before the
/// password is checked, and repeated failures are delayed and then locked (429, the same
/// whether or not the account exists). A user with MFA gets
/// `{"mfa_required": true, "mfa_token": …}` instead of tokens.
#[utoipa::path(post, path = "/v1/auth/login", operation_id = "loginWithPassword", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = LoginResponse),
    (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "Account disabled, tenant suspended or address not allowed", body = ErrorBody),
    (status = 429, description = "Too many failed sign-ins (see Retry-After)", body = ErrorBody),
))]
pub async fn login(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    client_certificate: Option<axum::Extension<crate::tls::ClientCertificate>>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Recorded<Json<LoginResponse>>> {
    let input = LoginInput {
        tenant: body.tenant,
        email: body.email,
        password: body.password,
        client_certificate: client_certificate.is_some(),
    };
    match auth::login(&state.core, &meta, input).await {
        Ok(LoginResult::Tokens(pair)) => Ok(Recorded(
            StatusCode::OK,
            Json(LoginResponse::Tokens(tokens(pair))),
        )),
        Ok(LoginResult::MfaRequired {
            mfa_token,
            expires_in,
        }) => Ok(Recorded(
            StatusCode::OK,
            Json(LoginResponse::MfaRequired(MfaChallengeView {
                mfa_required: true,
                mfa_token: mfa_token.expose_secret().to_owned(),
                expires_in,
            })),
        )),
        Err(auth::Audited(e)) => Err(ApiError::from(e).audited()),
    }
}

/// Exchange a refresh token for a new pair. Each refresh token works once; presenting a spent
/// one answers 401 `refresh_token_reused` and ends the whole session. Staff confined to the
/// tenant's allow-list are refused (403 `ip_not_allowed`) from elsewhere, without spending the
/// token.
#[utoipa::path(post, path = "/v1/auth/refresh", operation_id = "refreshSession", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, description = "Address not allowed for this session", body = ErrorBody),
))]
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Recorded<Json<TokenResponse>>> {
    match auth::refresh(&state.core, &meta, &body.refresh_token).await {
        Ok(pair) => Ok(Recorded(StatusCode::OK, render(pair))),
        Err(auth::Audited(e)) => Err(ApiError::from(e).audited()),
    }
}

/// End the current session: its access token stops working at once and its refresh token is dead.
#[utoipa::path(post, path = "/v1/auth/logout", operation_id = "logoutSession", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "Signed out"), (status = 401, body = ErrorBody),
))]
pub async fn logout(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
) -> ApiResult<Recorded<()>> {
    auth::logout(&state.core, &meta, &principal).await?;
    Ok(Recorded(StatusCode::NO_CONTENT, ()))
}

/// The signed-in principal: ids, roles and effective permissions.
#[utoipa::path(get, path = "/v1/me", operation_id = "getCurrentPrincipal", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, body = MeView), (status = 401, body = ErrorBody),
))]
pub async fn me(principal: Principal) -> Json<MeView> {
    Json(MeView {
        object: "principal",
        user_id: principal.user_id.to_string(),
        tenant_id: principal.tenant_id.as_ref().map(ToString::to_string),
        session_id: principal.session_id().map(ToString::to_string),
        api_token_id: match &principal.credential {
            Credential::ApiToken(id) => Some(id.clone()),
            Credential::Session(_) => None,
        },
        authenticated_at: principal.authenticated_at.map(|t| t.to_rfc3339()),
        mfa_enrolment_required: principal.mfa_enrolment_required,
        roles: principal
            .roles
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        permissions: principal
            .permissions
            .iter()
            .map(|(p, s)| PermissionView {
                name: p.as_str(),
                scope: s.as_str(),
            })
            .collect(),
    })
}
