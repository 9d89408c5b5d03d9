//! Password reset by email: `POST /v1/auth/password-reset` and
//! `POST /v1/auth/password-reset/confirm` (both public).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Recorded;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::http::state::AppState;
use crate::service::RequestMeta;
use crate::service::password_reset::{self, ResetConfirm, ResetRequest};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    /// The tenant's slug.
    pub tenant: String,
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirmRequest {
    /// The token from the emailed link.
    #[schema(value_type = String, format = Password)]
    pub token: SecretString,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
    /// A current TOTP code or an unused recovery code; required when the account uses MFA.
    pub code: Option<String>,
}

/// The answer to a reset request, identical whether or not the account exists.
#[derive(Serialize, ToSchema)]
pub struct PasswordResetAccepted {
    /// Always `password_reset_request`.
    pub object: &'static str,
    pub message: &'static str,
}

const ACCEPTED_MESSAGE: &str = "if an active account with this email exists in this tenant, a link to reset its password has been sent to it; the link works once, within 30 minutes";

/// Ask for a password-reset link by email. Always answers 202 with the same body, whether or
/// not the tenant or the account exists (or the account is disabled). The link is valid for
/// 30 minutes and works once; a newer request invalidates older links; at most 3 links per
/// account are sent per 15 minutes.
#[utoipa::path(post, path = "/v1/auth/password-reset", operation_id = "requestPasswordReset", tag = "auth", request_body = PasswordResetRequest, responses(
    (status = 202, body = PasswordResetAccepted),
    (status = 400, description = "Malformed request or email", body = ErrorBody),
))]
pub async fn request(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<PasswordResetRequest>,
) -> ApiResult<Recorded<Json<PasswordResetAccepted>>> {
    let input = ResetRequest {
        tenant: body.tenant,
        email: body.email,
    };
    password_reset::request(&state.core, &meta, input).await?;
    Ok(Recorded(
        StatusCode::ACCEPTED,
        Json(PasswordResetAccepted {
            object: "password_reset_request",
            message: ACCEPTED_MESSAGE,
        }),
    ))
}

/// Set a new password with the emailed token. The password must satisfy the tenant's policy
/// (the error names the rule; the token stays usable). With MFA on, `code` is required. On
/// success every session of the user is revoked and the account's sign-in lock is lifted.
/// An unknown, expired, superseded or spent token answers 400 `reset_token_invalid`.
#[utoipa::path(post, path = "/v1/auth/password-reset/confirm", operation_id = "confirmPasswordReset", tag = "auth", request_body = PasswordResetConfirmRequest, responses(
    (status = 204, description = "Password changed; all sessions revoked"),
    (status = 400, description = "Invalid token, refused password, or missing/wrong MFA code", body = ErrorBody),
    (status = 429, description = "Too many wrong MFA codes (see Retry-After)", body = ErrorBody),
))]
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<PasswordResetConfirmRequest>,
) -> ApiResult<Recorded<()>> {
    let input = ResetConfirm {
        token: body.token,
        new_password: body.new_password,
        code: body.code,
    };
    match password_reset::confirm(&state.core, &meta, input).await {
        Ok(()) => Ok(Recorded(StatusCode::NO_CONTENT, ())),
        Err(e) => {
            // These refusals wrote their security event already.
            let recorded = matches!(e.code(), "reset_token_invalid" | "mfa_code_invalid");
            let api = ApiError::from(e);
            Err(if recorded { api.audited() } else { api })
        }
    }
}
