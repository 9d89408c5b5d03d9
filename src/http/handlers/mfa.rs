//! TOTP multi-factor authentication: enrolment, status, disabling, recovery codes, and the
//! second step of a sign-in (`POST /v1/auth/mfa`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Recorded;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::http::state::AppState;
use crate::http::views::TokenResponse;
use crate::service::auth::Audited;
use crate::service::{Principal, RequestMeta, mfa};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    /// The token `POST /v1/auth/login` answered with `mfa_required`.
    #[schema(value_type = String)]
    pub mfa_token: SecretString,
    /// A current 6-digit TOTP code, or an unused recovery code (`ABCD-EFGH-IJKL-MNOP`).
    #[schema(value_type = String)]
    pub code: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaConfirmRequest {
    /// The current 6-digit code shown by the authenticator being enrolled.
    #[schema(value_type = String)]
    pub code: SecretString,
}

/// An enrolment in progress: add it to an authenticator app, then confirm with a code.
#[derive(Serialize, ToSchema)]
pub struct TotpEnrolmentView {
    /// Always `mfa_totp_enrolment`.
    pub object: &'static str,
    /// The shared secret, base32 (160 bits), for typing into an app. Shown only here.
    pub secret: String,
    /// `otpauth://totp/…` (SHA1, 6 digits, 30 s period).
    pub otpauth_uri: String,
    /// The URI as a QR code: an SVG image as a `data:image/svg+xml;base64,…` URI.
    pub qr_code: String,
    pub algorithm: &'static str,
    pub digits: u32,
    pub period: i64,
    /// Confirm before this time (RFC 3339), or start again.
    pub expires_at: String,
}

/// Recovery codes: each works once in place of a TOTP code. Shown only in this answer.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodesView {
    /// Always `mfa_recovery_codes`.
    pub object: &'static str,
    pub recovery_codes: Vec<String>,
}

/// The caller's multi-factor authentication state.
#[derive(Serialize, ToSchema)]
pub struct MfaStatusView {
    /// Always `mfa_status`.
    pub object: &'static str,
    pub enabled: bool,
    /// `totp` when enabled.
    pub method: Option<&'static str>,
    /// When MFA was turned on (RFC 3339).
    pub enabled_at: Option<String>,
    pub recovery_codes_remaining: i64,
    /// An enrolment awaits its confirming code.
    pub enrolment_pending: bool,
    /// The caller's role must use MFA (it cannot be disabled).
    pub required: bool,
}

fn codes_view(codes: mfa::RecoveryCodes) -> Json<RecoveryCodesView> {
    Json(RecoveryCodesView {
        object: "mfa_recovery_codes",
        recovery_codes: codes.0,
    })
}

/// Finish a sign-in for a user with MFA: the token from `/v1/auth/login` and a TOTP code or a
/// recovery code. A code is accepted once; wrong codes count towards the account's lockout and
/// a token dies after 5 of them.
#[utoipa::path(post, path = "/v1/auth/mfa", operation_id = "loginWithMfa", tag = "auth", request_body = MfaLoginRequest, responses(
    (status = 200, body = TokenResponse),
    (status = 400, body = ErrorBody),
    (status = 401, description = "`invalid_mfa_code` (wrong, replayed or spent code) or `invalid_token` (unknown, used, expired or dead MFA token)", body = ErrorBody),
    (status = 403, description = "Account disabled or tenant suspended", body = ErrorBody),
    (status = 429, description = "Too many failed attempts (see Retry-After)", body = ErrorBody),
))]
pub async fn login(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<MfaLoginRequest>,
) -> ApiResult<Recorded<Json<TokenResponse>>> {
    match mfa::complete_login(
        &state.core,
        &meta,
        &body.mfa_token,
        body.code.expose_secret(),
    )
    .await
    {
        Ok(pair) => Ok(Recorded(StatusCode::OK, super::auth::render(pair))),
        Err(Audited(e)) => Err(ApiError::from(e).audited()),
    }
}

/// Start (or restart) a TOTP enrolment: answers the secret, its `otpauth://` URI and a QR
/// code. Nothing changes until `POST /v1/me/mfa/totp/confirm`. Replacing an active
/// authenticator needs step-up.
#[utoipa::path(post, path = "/v1/me/mfa/totp", operation_id = "enrolTotp", tag = "mfa", security(("bearer" = [])), responses(
    (status = 201, body = TotpEnrolmentView),
    (status = 401, body = ErrorBody), (status = 403, description = "`step_up_required` (replacing an active authenticator) or `session_required` (API tokens)", body = ErrorBody),
))]
pub async fn enrol(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
) -> ApiResult<Recorded<Json<TotpEnrolmentView>>> {
    let e = mfa::start_enrolment(&state.core, &meta, &principal).await?;
    Ok(Recorded(
        StatusCode::CREATED,
        Json(TotpEnrolmentView {
            object: "mfa_totp_enrolment",
            secret: e.secret.expose_secret().to_owned(),
            otpauth_uri: e.otpauth_uri.expose_secret().to_owned(),
            qr_code: e.qr_code.expose_secret().to_owned(),
            algorithm: "SHA1",
            digits: mfa::TOTP_DIGITS,
            period: mfa::TOTP_STEP_SECONDS,
            expires_at: e.expires_at.to_rfc3339(),
        }),
    ))
}

/// Confirm an enrolment with the authenticator's current code: MFA is on from now, and the
/// answer carries 10 single-use recovery codes, shown this once.
#[utoipa::path(post, path = "/v1/me/mfa/totp/confirm", operation_id = "confirmTotpEnrolment", tag = "mfa", security(("bearer" = [])), request_body = MfaConfirmRequest, responses(
    (status = 200, body = RecoveryCodesView),
    (status = 400, description = "`invalid_mfa_code`", body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 409, description = "`mfa_enrolment_missing`, `mfa_enrolment_expired` or `mfa_enrolment_changed`", body = ErrorBody),
))]
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<MfaConfirmRequest>,
) -> ApiResult<Recorded<Json<RecoveryCodesView>>> {
    let codes =
        mfa::confirm_enrolment(&state.core, &meta, &principal, body.code.expose_secret()).await?;
    Ok(Recorded(StatusCode::OK, codes_view(codes)))
}

/// The caller's MFA state: enabled, since when, recovery codes left.
#[utoipa::path(get, path = "/v1/me/mfa", operation_id = "getMfaStatus", tag = "mfa", security(("bearer" = [])), responses(
    (status = 200, body = MfaStatusView), (status = 401, body = ErrorBody),
))]
pub async fn status(
    State(state): State<Arc<AppState>>,
    principal: Principal,
) -> ApiResult<Json<MfaStatusView>> {
    let s = mfa::status(&state.core, &principal).await?;
    Ok(Json(MfaStatusView {
        object: "mfa_status",
        enabled: s.enabled,
        method: s.enabled.then_some("totp"),
        enabled_at: s.enabled_at.map(|t| t.to_rfc3339()),
        recovery_codes_remaining: s.recovery_codes_remaining,
        enrolment_pending: s.enrolment_pending,
        required: s.required,
    }))
}

/// Turn MFA off (needs step-up). Refused with `mfa_required_by_policy` when the caller's
/// role must use MFA.
#[utoipa::path(delete, path = "/v1/me/mfa/totp", operation_id = "disableMfa", tag = "mfa", security(("bearer" = [])), responses(
    (status = 204, description = "MFA disabled; recovery codes deleted"),
    (status = 401, body = ErrorBody),
    (status = 403, description = "`step_up_required` or `mfa_required_by_policy`", body = ErrorBody),
    (status = 409, description = "`mfa_not_enabled`", body = ErrorBody),
))]
pub async fn disable(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
) -> ApiResult<Recorded<()>> {
    mfa::disable(&state.core, &meta, &principal).await?;
    Ok(Recorded(StatusCode::NO_CONTENT, ()))
}

/// Replace the caller's recovery codes with 10 new ones (needs step-up); the old ones stop
/// working.
#[utoipa::path(post, path = "/v1/me/mfa/recovery-codes", operation_id = "regenerateRecoveryCodes", tag = "mfa", security(("bearer" = [])), responses(
    (status = 200, body = RecoveryCodesView),
    (status = 401, body = ErrorBody), (status = 403, description = "`step_up_required`", body = ErrorBody),
    (status = 409, description = "`mfa_not_enabled`", body = ErrorBody),
))]
pub async fn regenerate_recovery_codes(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
) -> ApiResult<Recorded<Json<RecoveryCodesView>>> {
    let codes = mfa::regenerate_recovery_codes(&state.core, &meta, &principal).await?;
    Ok(Recorded(StatusCode::OK, codes_view(codes)))
}
