//! mTLS for platform admins, as a step of `authorize`: with `platform_admin_client_cert`, a
//! request by a platform admin, and a platform sign-in (a login without a tenant), is refused
//! with 403 `client_certificate_required` unless its TLS connection presented a client
//! certificate that the configured client CA verified ([`ClientCertificate`], put on the
//! request by the TLS acceptor). Tenant users are never asked for one.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::access::RouteDef;
use super::error::ApiError;
use super::state::AppState;
use crate::domain::audit::Outcome;
use crate::domain::security::SecurityEvent;
use crate::service::{AuditBuilder, Principal, RequestMeta, security};
use crate::tls::ClientCertificate;

/// The sign-in route whose tenant-less form is a platform sign-in.
const LOGIN: &str = "/v1/auth/login";

/// Passes the request on, or refuses it (recording an `authorization_refused` security event).
pub(super) async fn enforce(
    state: &AppState,
    meta: &RequestMeta,
    def: &RouteDef,
    principal: Option<&Principal>,
    req: Request,
) -> Result<Request, Response> {
    let core = &state.core;
    if !core.settings.platform_admin_client_cert
        || req.extensions().get::<ClientCertificate>().is_some()
    {
        return Ok(req);
    }
    let (needs, req) = match principal {
        Some(p) => (p.roles.iter().any(|r| r.is_platform()), req),
        None if def.path == LOGIN => platform_sign_in(state, req).await?,
        None => (false, req),
    };
    if !needs {
        return Ok(req);
    }
    let ev = AuditBuilder::new(core, meta, principal)
        .own(
            def.action,
            None,
            Outcome::Denied,
            Some("client_certificate_required"),
        )
        .security(SecurityEvent::AuthorizationRefused);
    security::record(core, ev).await;
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "permission_error",
        "client_certificate_required",
        "platform administration requires a TLS client certificate issued by the configured client CA",
    )
    .into_response())
}

/// Whether a login body names no tenant (`tenant` absent or null). The body is read within the
/// server's body limit and handed on unchanged; a body that is not a JSON object is left for
/// the handler to refuse.
async fn platform_sign_in(state: &AppState, req: Request) -> Result<(bool, Request), Response> {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, state.max_body_bytes).await else {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            "the request body is larger than the limit",
        )
        .into_response());
    };
    let platform = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(m)) => m.get("tenant").is_none_or(serde_json::Value::is_null),
        _ => false,
    };
    Ok((
        platform,
        Request::from_parts(parts, axum::body::Body::from(bytes)),
    ))
}
