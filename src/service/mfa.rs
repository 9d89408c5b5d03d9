//! Multi-factor authentication (TOTP, RFC 6238) and recovery codes.

use super::auth::{Audited, LoginResult};
use super::{Core, RequestMeta};
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};

/// Checks a second-factor code (a TOTP code or an unused recovery code) of a user with MFA,
/// spending it. `Ok(false)`: wrong, replayed or spent.
pub async fn verify_second_factor(
    _core: &Core,
    _meta: &RequestMeta,
    _tenant: Option<&TenantId>,
    _user: &UserId,
    _code: &str,
) -> AppResult<bool> {
    Err(AppError::internal(
        "TOTP verification is being built (issue 5)",
    ))
}

/// Starts the second step of a sign-in for a user with MFA: answers an MFA token.
pub async fn begin_challenge(
    _core: &Core,
    _meta: &RequestMeta,
    _user: &crate::store::UserRecord,
    _tenant: Option<&TenantId>,
) -> Result<LoginResult, Audited> {
    Err(Audited(AppError::internal(
        "TOTP sign-in is being built (issue 5)",
    )))
}
