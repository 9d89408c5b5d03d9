//! The public error shape: `{"error": {"type", "code", "message", "param", "request_id"}}`.
//! Every refusal the API makes goes through [`ApiError`]. 5xx bodies never carry internals: the
//! detail is logged with the request id instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::context::{AuditRecorded, current_request_id};
use crate::error::AppError;

/// `Retry-After` of a 503 `storage_unavailable`: soon enough that a client notices recovery
/// within seconds, long enough not to hammer a struggling database.
pub const STORAGE_RETRY_AFTER_SECONDS: i64 = 2;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// The use case already wrote this refusal's audit record.
    pub audited: bool,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<i64>,
}

/// The error body, as documented in OpenAPI.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `invalid_request_error`, `authentication_error`, `permission_error` or `api_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A stable machine-readable code, e.g. `parameter_invalid`, `invalid_credentials`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// The request field at fault, if any (dotted path, e.g. `manager.email`).
    pub param: Option<String>,
    /// The `X-Request-Id` of the request.
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            audited: false,
            retry_after: None,
        }
    }

    pub fn invalid(code: &'static str, param: Option<String>, message: impl Into<String>) -> Self {
        Self {
            param,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                code,
                message,
            )
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            format!("no such {what}"),
        )
    }

    /// The public body of this error (what a response, a stored idempotent reply or a batch
    /// item carries).
    pub fn into_body(self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_owned(),
                code: self.code.to_owned(),
                message: self.message,
                param: self.param,
                request_id: current_request_id(),
            },
        }
    }

    pub fn audited(mut self) -> Self {
        self.audited = true;
        self
    }
}

impl From<crate::service::ledger::MoveError> for ApiError {
    fn from(e: crate::service::ledger::MoveError) -> Self {
        let api = ApiError::from(e.error);
        if e.audited { api.audited() } else { api }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        use StatusCode as S;
        const INVALID: &str = "invalid_request_error";
        const AUTHN: &str = "authentication_error";
        const PERM: &str = "permission_error";
        let message = e.to_string();
        match e {
            AppError::Invalid { code, param, .. } => ApiError::invalid(code, param, message),
            AppError::NotFound(what) => ApiError::not_found(what),
            AppError::Conflict { code, param, .. } => ApiError {
                param,
                ..ApiError::new(S::CONFLICT, INVALID, code, message)
            },
            AppError::Unprocessable { code, .. } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, INVALID, code, message)
            }
            AppError::Refused { code, param, .. } => ApiError {
                param,
                ..ApiError::new(S::UNPROCESSABLE_ENTITY, INVALID, code, message)
            },
            AppError::InvalidCredentials => {
                ApiError::new(S::UNAUTHORIZED, AUTHN, "invalid_credentials", message)
            }
            AppError::AuthenticationRequired => {
                ApiError::new(S::UNAUTHORIZED, AUTHN, "authentication_required", message)
            }
            AppError::InvalidToken(_) => {
                ApiError::new(S::UNAUTHORIZED, AUTHN, "invalid_token", message)
            }
            AppError::Unauthenticated { code, .. } => {
                ApiError::new(S::UNAUTHORIZED, AUTHN, code, message)
            }
            AppError::TokenExpired => {
                ApiError::new(S::UNAUTHORIZED, AUTHN, "token_expired", message)
            }
            AppError::InvalidMfaCode => {
                ApiError::new(S::UNAUTHORIZED, AUTHN, "invalid_mfa_code", message)
            }
            AppError::RefreshTokenReused => {
                ApiError::new(S::UNAUTHORIZED, AUTHN, "refresh_token_reused", message)
            }
            AppError::AccountUnavailable { code, .. } => {
                ApiError::new(S::FORBIDDEN, AUTHN, code, message)
            }
            AppError::Forbidden { code, .. } => ApiError::new(S::FORBIDDEN, PERM, code, message),
            AppError::StepUpRequired | AppError::StepUpImpossible => {
                ApiError::new(S::FORBIDDEN, PERM, "step_up_required", message)
            }
            AppError::MfaEnrolmentRequired => {
                ApiError::new(S::FORBIDDEN, PERM, "mfa_enrolment_required", message)
            }
            AppError::TooManyAttempts {
                code,
                retry_after_seconds,
                ..
            } => ApiError {
                retry_after: Some(retry_after_seconds.max(1)),
                ..ApiError::new(S::TOO_MANY_REQUESTS, "rate_limit_error", code, message)
            },
            AppError::StorageUnavailable(detail) => {
                // Every request fails alike while storage is down: one line per kind and
                // interval, with the count left out (`log_limit`).
                crate::error_limited!(
                    detail,
                    request_id = current_request_id().as_deref(),
                    "storage unavailable"
                );
                ApiError {
                    retry_after: Some(STORAGE_RETRY_AFTER_SECONDS),
                    ..ApiError::new(
                        S::SERVICE_UNAVAILABLE,
                        "api_error",
                        "storage_unavailable",
                        "storage is temporarily unavailable; retry after the Retry-After seconds \
                         (a money movement with the same Idempotency-Key)",
                    )
                }
            }
            AppError::Internal(detail) => {
                crate::error_limited!(
                    detail,
                    request_id = current_request_id().as_deref(),
                    "internal error"
                );
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal_error",
                    "an internal error occurred; quote the request id when reporting it",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, audited, status) = (self.code, self.audited, self.status);
        let retry_after = self.retry_after;
        let body = self.into_body();
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kasho\""),
            );
        }
        resp.extensions_mut().insert(ErrorCode(code));
        if audited {
            resp.extensions_mut().insert(AuditRecorded);
        }
        resp
    }
}

/// The error code of an error response, for the audit fallback's `reason`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

pub type ApiResult<T> = Result<T, ApiError>;
