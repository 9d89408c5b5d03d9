//! CORS from each tenant's allow-list (`cors_allowed_origins` in the security policy).
//!
//! CORS is not authorisation: it only tells a browser which pages may read a response. Every
//! request still goes through `middleware::authorize` with its bearer token. Bearer tokens are
//! the only credential (no cookies), so `Access-Control-Allow-Credentials` is never sent, and
//! neither is `*`: the allowed origin is echoed exactly, with `Vary: Origin`.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) carries no
//!   credential, so it is answered 204 when the origin is on ANY tenant's list (one indexed
//!   probe of `tenant_cors_origins`), else refused 403 in the error shape without CORS headers.
//! - On an actual request, the origin is allowed when it is on the list of the authenticated
//!   principal's tenant (`authorize` notes the principal through [`note_principal`]); when no
//!   principal was established (public routes, and refusals before authentication, so a page
//!   can read its own 401), when it is on any tenant's list.

use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::domain::security::{CorsOrigin, SecurityPolicy};
use crate::service::Principal;

/// Methods the API answers cross-origin.
pub const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
/// Request headers a cross-origin caller may send.
pub const ALLOWED_HEADERS: &str =
    "Authorization, Content-Type, Idempotency-Key, Kasho-Timestamp, Kasho-Nonce, Kasho-Signature";
/// Response headers a cross-origin page may read.
pub const EXPOSED_HEADERS: &str = "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Idempotency-Replayed";
/// How long a browser may cache a preflight answer (seconds).
pub const MAX_AGE_SECONDS: &str = "600";

/// Where `authorize` leaves the policy of the principal it authenticated.
#[derive(Clone, Default)]
struct PrincipalSlot(Arc<OnceLock<Arc<SecurityPolicy>>>);

/// Called by `authorize` once it knows the caller: the CORS decision for this request is then
/// made against the caller's tenant's list only.
pub fn note_principal(req: &Request, principal: &Principal) {
    if let Some(slot) = req.extensions().get::<PrincipalSlot>() {
        let _ = slot.0.set(principal.policy.clone());
    }
}

/// The request's `Origin`, normalised as policies store it; `None` when absent or not an
/// origin any policy could hold.
fn request_origin(headers: &HeaderMap) -> Option<CorsOrigin> {
    let raw = headers.get(header::ORIGIN)?.to_str().ok()?;
    CorsOrigin::parse(raw).ok()
}

async fn known_anywhere(state: &AppState, origin: &CorsOrigin) -> bool {
    match state.core.store.cors_origin_known(origin.as_str()).await {
        Ok(known) => known,
        Err(e) => {
            tracing::warn!(error = %e, "CORS origin look-up failed; treating the origin as unknown");
            false
        }
    }
}

fn allow_origin(resp: &mut Response, origin: &CorsOrigin) {
    if let Ok(v) = HeaderValue::from_str(origin.as_str()) {
        resp.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
}

fn add_vary_origin(resp: &mut Response) {
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The router-level CORS layer.
pub async fn cors(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::ORIGIN) {
        // The answer depends on `Origin`, so say so even when there is none.
        let mut resp = next.run(req).await;
        add_vary_origin(&mut resp);
        return resp;
    }
    let origin = request_origin(req.headers());
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let allowed = match &origin {
            Some(o) => known_anywhere(&state, o).await,
            None => false,
        };
        let Some(origin) = origin.filter(|_| allowed) else {
            let mut resp = ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "cors_origin_not_allowed",
                "this origin is not allowed to call the API from a browser",
            )
            .into_response();
            add_vary_origin(&mut resp);
            return resp;
        };
        let mut resp = StatusCode::NO_CONTENT.into_response();
        allow_origin(&mut resp, &origin);
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECONDS),
        );
        add_vary_origin(&mut resp);
        return resp;
    }

    let slot = PrincipalSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).await;
    let allowed = match (&origin, slot.0.get()) {
        (None, _) => false,
        (Some(o), Some(policy)) => policy.cors_allowed_origins.contains(o),
        (Some(o), None) => known_anywhere(&state, o).await,
    };
    if let (true, Some(o)) = (allowed, &origin) {
        allow_origin(&mut resp, o);
        resp.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
    add_vary_origin(&mut resp);
    resp
}
