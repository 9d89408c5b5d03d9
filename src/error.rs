//! The application error: what a use case can refuse, in domain terms. The HTTP layer maps
//! each variant to a status, an error `type` and a stable `code` (see `http::error`); storage
//! that cannot serve now becomes [`AppError::StorageUnavailable`] (503), other storage and
//! infrastructure failures collapse into [`AppError::Internal`]; the detail of either goes to
//! the log and never to the client.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Input failed validation. `param` names the offending field.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        param: Option<String>,
        message: String,
    },
    /// The resource does not exist, or exists in another tenant: both answer the same.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The request conflicts with existing state (a duplicate slug or email).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        param: Option<String>,
        message: String,
    },
    /// The request is well-formed but breaks a business rule.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// Like `Unprocessable` (422), naming the request field the rule applies to (a KYC limit
    /// names `amount`).
    #[error("{message}")]
    Refused {
        code: &'static str,
        param: Option<String>,
        message: String,
    },
    /// Email/password did not match (or the account does not exist: the same answer).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// No credential was presented where one is required.
    #[error("authentication required")]
    AuthenticationRequired,
    /// A token is malformed, forged, revoked or otherwise not acceptable.
    #[error("{0}")]
    InvalidToken(&'static str),
    /// A credential or request signature that is not acceptable, with its own code
    /// (`signature_invalid`, `request_replayed`, `token_expired`, ...): 401.
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// An access token past its expiry.
    #[error("access token expired")]
    TokenExpired,
    /// A second-factor code (TOTP or recovery code) was wrong, already used or spent.
    #[error("the code is wrong or was already used")]
    InvalidMfaCode,
    /// A spent refresh token was presented again; its session has been revoked.
    #[error("refresh token already used; the session has been revoked")]
    RefreshTokenReused,
    /// The account or its tenant may not sign in.
    #[error("{message}")]
    AccountUnavailable { code: &'static str, message: String },
    /// Authenticated, but the role table does not grant this.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// A sensitive action needs an authentication within the tenant's step-up window.
    #[error(
        "this action needs a recent authentication; re-authenticate with POST /v1/auth/step-up"
    )]
    StepUpRequired,
    /// The same, for a credential that cannot step up (an API token).
    #[error(
        "this action (or an amount above the tenant's step-up threshold) needs a recent authentication, and API tokens cannot step up: use a signed-in session that re-authenticates with POST /v1/auth/step-up"
    )]
    StepUpImpossible,
    /// The user's role must use MFA and they have not enrolled yet.
    #[error("your role requires multi-factor authentication; enrol a TOTP authenticator first")]
    MfaEnrolmentRequired,
    /// Too many attempts: try again after `retry_after_seconds`.
    #[error("{message}")]
    TooManyAttempts {
        code: &'static str,
        message: String,
        retry_after_seconds: i64,
    },
    /// Storage cannot serve now (a full disk, an I/O error, a lost database connection): 503
    /// `storage_unavailable` with `Retry-After`. The detail is logged (rate-limited), never
    /// returned.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// Something failed inside Kasho. The detail is logged, never returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            code: "parameter_invalid",
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// The generic refusal of the authorisation middleware.
    pub fn forbidden() -> Self {
        Self::Forbidden {
            code: "forbidden",
            message: "you do not have permission to perform this action".into(),
        }
    }

    /// The stable code this error carries in the API (and in audit `reason`s).
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Invalid { code, .. }
            | AppError::Conflict { code, .. }
            | AppError::Unprocessable { code, .. }
            | AppError::Refused { code, .. }
            | AppError::AccountUnavailable { code, .. }
            | AppError::Forbidden { code, .. }
            | AppError::TooManyAttempts { code, .. }
            | AppError::Unauthenticated { code, .. } => code,
            AppError::StepUpRequired | AppError::StepUpImpossible => "step_up_required",
            AppError::MfaEnrolmentRequired => "mfa_enrolment_required",
            AppError::NotFound(_) => "resource_missing",
            AppError::InvalidCredentials => "invalid_credentials",
            AppError::AuthenticationRequired => "authentication_required",
            AppError::InvalidToken(_) => "invalid_token",
            AppError::TokenExpired => "token_expired",
            AppError::RefreshTokenReused => "refresh_token_reused",
            AppError::InvalidMfaCode => "invalid_mfa_code",
            AppError::StorageUnavailable(_) => "storage_unavailable",
            AppError::Internal(_) => "internal_error",
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { constraint } => AppError::Conflict {
                code: "resource_exists",
                param: None,
                message: format!("a resource with the same unique value exists ({constraint})"),
            },
            StoreError::Database(msg) => AppError::Internal(msg),
            StoreError::Unavailable(msg) => AppError::StorageUnavailable(msg),
            StoreError::CustomerErased => AppError::Unprocessable {
                code: "customer_erased",
                message: "this customer has been erased".into(),
            },
            StoreError::LastManager => AppError::Unprocessable {
                code: "last_manager",
                message: "this is the tenant's last active MANAGER: it cannot lose the role or \
                          be disabled; invite another MANAGER first"
                    .into(),
            },
            StoreError::IndexKeyChanged => AppError::Conflict {
                code: "index_key_changed",
                param: None,
                message: "the tenant's search index key was being rotated meanwhile; retry".into(),
            },
            StoreError::ActorRevoked(r) => r.into(),
        }
    }
}

impl From<crate::domain::authz::ActorRevoked> for AppError {
    /// The ordinary answers of the authorisation middleware: what it would have said had the
    /// request arrived after the change.
    fn from(r: crate::domain::authz::ActorRevoked) -> Self {
        match r {
            crate::domain::authz::ActorRevoked::CredentialEnded => {
                AppError::InvalidToken("the session or API token has ended; sign in again")
            }
            crate::domain::authz::ActorRevoked::RolesChanged => AppError::forbidden(),
            crate::domain::authz::ActorRevoked::TenantSuspended => AppError::AccountUnavailable {
                code: "tenant_suspended",
                message: "this tenant is suspended".into(),
            },
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;
