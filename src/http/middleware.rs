//! Request-wide layers: the request id, security headers, access logging, and the one
//! authorisation mechanism every API route goes through.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::access::{Access, RouteDef};
use super::context::{AuditRecorded, REQUEST_ID, request_meta};
use super::error::{ApiError, ErrorCode};
use super::state::AppState;
use crate::domain::audit::Outcome;
use crate::domain::security::SecurityEvent;
use crate::domain::signing;
use crate::error::AppError;
use crate::ids::RequestId;
use crate::service::{AuditBuilder, RequestMeta, api_tokens, audit, auth, security};

/// Gives every request a fresh `req_…` id (never trusting the client's), echoes it in
/// `X-Request-Id`, and logs one line per request.
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = RequestId::generate().to_string();
    let method = req.method().clone();
    // `Router::layer` runs after routing, so the matched route template (never the concrete
    // path, which holds ids) is on the request.
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let started = Instant::now();
    // Every line logged while serving the request carries its id (the JSON formatter writes the
    // current span's fields).
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span)
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let route = matched.unwrap_or_else(|| "(unmatched)".to_owned());
    crate::observability::http_request(
        metric_method(&method),
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// Whether responses carry `Strict-Transport-Security` (the `hsts` setting).
#[derive(Debug, Clone, Copy)]
pub struct Hsts(pub bool);

/// The method as a metric label: the standard ones, everything else `OTHER` (bounded labels).
fn metric_method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Security headers on every response. API responses may carry tokens or personal data, so
/// they are never cached.
pub async fn security_headers(State(hsts): State<Hsts>, req: Request, next: Next) -> Response {
    let is_docs = req.uri().path().starts_with("/docs");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if hsts.0 {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    if is_docs {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
    } else {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The access token from `Authorization: Bearer …` or FinCode's `X-Auth-Token`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Authenticates an API-token request and checks its signature (required by the tenant, or
/// sent anyway). The body is read here to be hashed, within the route's body limit, and the
/// same bytes are handed on to the handler.
async fn api_token_request(
    state: &AppState,
    meta: &RequestMeta,
    def: &RouteDef,
    secret: &str,
    req: Request,
) -> Result<(crate::service::Principal, Request), Response> {
    let core = &state.core;
    // Owned copies: nothing borrowed from the request lives across an await (the body is not
    // `Sync`).
    let (ts, nonce, sig) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{0}").to_owned())
        };
        (
            header(signing::TIMESTAMP_HEADER),
            header(signing::NONCE_HEADER),
            header(signing::SIGNATURE_HEADER),
        )
    };
    let authed = api_tokens::authenticate(core, meta, secret)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let headers = api_tokens::SignatureHeaders {
        timestamp: ts.as_deref(),
        nonce: nonce.as_deref(),
        signature: sig.as_deref(),
    };
    if !headers.any() && !authed.require_signed {
        return Ok((authed.principal, req));
    }
    let (parts, body) = req.into_parts();
    let limit = def.body_limit.unwrap_or(0).max(state.max_body_bytes);
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            "the request body is larger than the limit",
        )
        .into_response());
    };
    api_tokens::verify_signature(
        core,
        meta,
        &authed,
        secret,
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        headers,
        &bytes,
    )
    .await
    .map_err(|e| ApiError::from(e).into_response())?;
    Ok((
        authed.principal,
        Request::from_parts(parts, axum::body::Body::from(bytes)),
    ))
}

fn is_mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// THE authorisation mechanism. Looks the matched route up in the route table and, unless it
/// is public, authenticates the caller and checks the table's permission. Unknown routes are
/// refused (fail closed). Afterwards, any state-changing request whose use case did not write
/// its own audit record (validation failures, refusals) gets one here.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    // The rate-limit guard in front has usually worked the request facts out already.
    let meta = match req.extensions().get::<RequestMeta>() {
        Some(m) => m.clone(),
        None => request_meta(&req, &state.core.settings.trusted_proxies),
    };
    let method = req.method().clone();
    // axum answers HEAD with the GET handler; authorise it as the GET it is.
    let lookup = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    let Some(def) = matched.and_then(|m| state.route(&lookup, m.as_str())) else {
        return ApiError::from(AppError::forbidden()).into_response();
    };
    let core = &state.core;

    let principal = match def.access {
        Access::Public => None,
        Access::MetricsToken => {
            if let Err(resp) = metrics_access(core, &meta, def.action, req.headers()).await {
                return resp;
            }
            None
        }
        Access::Authenticated | Access::Permission(_) => {
            let presented = presented_token(req.headers()).map(str::to_owned);
            let result = match presented.as_deref() {
                None => Err(AppError::AuthenticationRequired),
                Some(t) if api_tokens::is_api_token(t) => {
                    match api_token_request(&state, &meta, def, t, req).await {
                        Ok((p, r)) => {
                            req = r;
                            Ok(p)
                        }
                        Err(resp) => return resp,
                    }
                }
                Some(t) => auth::authenticate(core, &meta, t).await,
            };
            match result {
                Ok(p) => {
                    super::cors::note_principal(&req, &p);
                    Some(p)
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    // The per-credential and per-tenant buckets, as soon as the principal is known.
    let quota = match &principal {
        Some(p) => match super::limits::principal_buckets(&state, &meta, p).await {
            Ok(q) => q,
            Err(resp) => return resp,
        },
        None => None,
    };

    // Platform administration may require a verified TLS client certificate (mTLS).
    req = match super::client_cert::enforce(&state, &meta, def, principal.as_ref(), req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };

    // A user whose role must use MFA and who has not enrolled can do nothing but enrol.
    if let Some(p) = &principal
        && p.mfa_enrolment_required
        && !super::routes::allowed_before_mfa(&lookup, def.path)
    {
        let ev = AuditBuilder::new(core, &meta, Some(p))
            .own(
                def.action,
                None,
                Outcome::Denied,
                Some("mfa_enrolment_required"),
            )
            .security(SecurityEvent::AuthorizationRefused);
        security::record(core, ev).await;
        return ApiError::from(AppError::MfaEnrolmentRequired).into_response();
    }

    if let (Access::Permission(perm), Some(p)) = (def.access, &principal)
        && p.permissions.scope(perm).is_none()
    {
        let ev = AuditBuilder::new(core, &meta, Some(p))
            .own(def.action, None, Outcome::Denied, Some(perm.as_str()))
            .security(SecurityEvent::AuthorizationRefused);
        security::record(core, ev).await;
        return ApiError::from(AppError::forbidden()).into_response();
    }

    req.extensions_mut().insert(meta.clone());
    if let Some(p) = &principal {
        req.extensions_mut().insert(p.clone());
    }
    crate::observability::phases::record(
        crate::observability::phases::Phase::Auth,
        started.elapsed(),
    );
    let mut resp = next.run(req).await;
    super::limits::carry(&mut resp, quota);

    if is_mutating(&method) && resp.extensions().get::<AuditRecorded>().is_none() {
        let outcome = match resp.status().as_u16() {
            200..=299 => Outcome::Success,
            401 | 403 => Outcome::Denied,
            _ => Outcome::Failure,
        };
        let reason = resp.extensions().get::<ErrorCode>().map(|c| c.0);
        let ev = AuditBuilder::new(core, &meta, principal.as_ref())
            .own(def.action, None, outcome, reason);
        if outcome == Outcome::Success {
            tracing::warn!(
                action = def.action,
                "state-changing request succeeded without an audit record from its use case"
            );
        }
        audit::record(core, &ev).await;
    }
    resp
}

/// `GET /metrics` on the main listener: 404 unless `metrics_token` is configured, then the
/// bearer token must equal it (compared in constant time); a wrong one is a refused token.
async fn metrics_access(
    core: &crate::service::Core,
    meta: &RequestMeta,
    action: &str,
    headers: &HeaderMap,
) -> Result<(), Response> {
    use secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    let Some(expected) = &core.settings.metrics_token else {
        return Err(ApiError::not_found("route").into_response());
    };
    let presented = presented_token(headers).unwrap_or("");
    // Hash both sides first so the comparison does not leak the token's length.
    let a = crate::crypto::sha256_hex(presented.as_bytes());
    let b = crate::crypto::sha256_hex(expected.expose_secret().as_bytes());
    if bool::from(a.as_bytes().ct_eq(b.as_bytes())) {
        return Ok(());
    }
    let reason = if presented.is_empty() {
        "metrics_token_missing"
    } else {
        "metrics_token_invalid"
    };
    let ev = AuditBuilder::new(core, meta, None)
        .event(None, action, None, Outcome::Denied, Some(reason))
        .security(SecurityEvent::TokenRejected);
    security::record(core, ev).await;
    Err(ApiError::from(if presented.is_empty() {
        AppError::AuthenticationRequired
    } else {
        AppError::InvalidToken("the metrics token is not valid")
    })
    .into_response())
}

/// Any error answer made without the error shape (an axum extractor's plain-text rejection,
/// a layer's bare status) is given it: the same status, a code for the status, a generic
/// message (the original text is dropped: it may quote the request). The wire guard's
/// synthetic requests (a request head refused before hyper saw it) are answered here too.
pub async fn shape_errors(req: Request, next: Next) -> Response {
    if let Some(refused) = super::wire::answer_refusal(req.headers()) {
        return refused;
    }
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (kind, code, message) = match status.as_u16() {
        400 => (
            "invalid_request_error",
            "bad_request",
            "the request could not be understood",
        ),
        404 => ("invalid_request_error", "resource_missing", "no such route"),
        405 => (
            "invalid_request_error",
            "method_not_allowed",
            "this method is not allowed on this path",
        ),
        408 => (
            "invalid_request_error",
            "request_timeout",
            "the request took too long to arrive",
        ),
        413 => (
            "invalid_request_error",
            "request_too_large",
            "the request body is larger than the limit",
        ),
        414 => (
            "invalid_request_error",
            "uri_too_long",
            "the request target is too long",
        ),
        415 => (
            "invalid_request_error",
            "unsupported_media_type",
            "request bodies must be JSON with Content-Type: application/json",
        ),
        431 => (
            "invalid_request_error",
            "request_headers_too_large",
            "the request line and headers are larger than the server accepts",
        ),
        s if s < 500 => (
            "invalid_request_error",
            "invalid_request",
            "the request was refused",
        ),
        503 => ("api_error", "service_unavailable", "try again later"),
        _ => (
            "api_error",
            "internal_error",
            "Kasho failed; the detail is in its log",
        ),
    };
    let mut shaped = ApiError::new(status, kind, code, message).into_response();
    // Keep what the original answer told the client about retrying and the connection.
    for name in [header::RETRY_AFTER, header::ALLOW, header::CONNECTION] {
        if let Some(v) = resp.headers().get(&name) {
            shaped.headers_mut().insert(name, v.clone());
        }
    }
    shaped
}

/// 404 in the error shape for paths no route matches.
pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// 405 in the error shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "this method is not allowed on this path",
    )
}

/// A panic becomes a 500 in the error shape; the payload goes to the log, not the client.
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic payload)");
    ApiError::from(AppError::Internal(format!("panic: {detail}"))).into_response()
}
