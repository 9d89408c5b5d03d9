//! The signed-in user's own credentials: `POST /v1/me/password`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;

use super::Recorded;
use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::http::state::AppState;
use crate::service::{Principal, RequestMeta, passwords};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, format = Password)]
    pub current_password: SecretString,
    /// Must meet the tenant's password policy: length, not common, not built from your email
    /// or the organisation's name, zxcvbn score at least 3, none of your last passwords.
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

/// Change your password. Needs a recent authentication (`POST /v1/auth/step-up`, else 403
/// `step_up_required`) and the current password (a wrong one answers 400
/// `current_password_incorrect` and counts towards the sign-in lockout). A new password the
/// policy refuses answers 400 with the rule broken (`password_too_short`, `password_too_long`,
/// `password_too_common`, `password_too_weak`, `password_contains_personal_info`,
/// `password_reused`) and `param: "new_password"`. On success every other session of yours
/// ends; this one stays signed in. API tokens are refused (403 `session_required`).
#[utoipa::path(post, path = "/v1/me/password", operation_id = "changePassword", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest, responses(
    (status = 204, description = "Password changed; your other sessions are signed out"),
    (status = 400, description = "Wrong current password, or the new one breaks a rule", body = ErrorBody),
    (status = 401, body = ErrorBody),
    (status = 403, description = "Step-up required, or an API token", body = ErrorBody),
    (status = 429, description = "Too many failed attempts (see Retry-After)", body = ErrorBody),
))]
pub async fn change_password(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Recorded<()>> {
    passwords::change(
        &state.core,
        &meta,
        &principal,
        &body.current_password,
        &body.new_password,
    )
    .await?;
    Ok(Recorded(StatusCode::NO_CONTENT, ()))
}
