//! Accepting an invitation: `POST /v1/invitations/accept` (public: the token is the
//! credential).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::Recorded;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::ApiJson;
use crate::http::state::AppState;
use crate::http::views::{AcceptInvitationRequest, InvitationAcceptedView};
use crate::service::RequestMeta;
use crate::service::invitations::{self, Accept};

/// Accept an invitation: choose the password (the tenant's password policy applies; a refused
/// password names the rule and leaves the link usable) and activate the account, which then
/// signs in with `POST /v1/auth/login`. The link works once, for 72 hours, and a newer
/// invitation replaces it: otherwise 400 `invitation_invalid`.
#[utoipa::path(post, path = "/v1/invitations/accept", operation_id = "acceptInvitation", tag = "users", request_body = AcceptInvitationRequest, responses(
    (status = 200, body = InvitationAcceptedView),
    (status = 400, description = "Invalid, expired, replaced or spent link; or a refused password", body = ErrorBody),
))]
pub async fn accept(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<AcceptInvitationRequest>,
) -> ApiResult<Recorded<Json<InvitationAcceptedView>>> {
    let input = Accept {
        token: body.token,
        password: body.password,
    };
    match invitations::accept(&state.core, &meta, input).await {
        Ok(a) => Ok(Recorded(
            StatusCode::OK,
            Json(InvitationAcceptedView {
                object: "invitation_acceptance",
                user_id: a.user.id,
                tenant: a.tenant_slug,
                email: a.user.stored_email,
                status: a.user.status,
            }),
        )),
        Err(e) => {
            // This refusal wrote its security event already.
            let recorded = e.code() == "invitation_invalid";
            let api = ApiError::from(e);
            Err(if recorded { api.audited() } else { api })
        }
    }
}
