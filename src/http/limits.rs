//! The early guard every request passes, matched or not: the ban check, scanner paths, the
//! per-address buckets (every request, and the stricter classes of the sign-in routes), the
//! intrusion counter of 401/403/404 answers, and the `RateLimit-*` headers. The per-credential
//! and per-tenant buckets are checked in `authorize`, once the principal is known
//! ([`principal_buckets`]).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::context::{client_ip, request_meta};
use super::error::ApiError;
use super::state::AppState;
use crate::service::intrusion::{self, BanReason};
use crate::service::ratelimit::{self, Bucket, Class, Quota};
use crate::service::{Credential, Principal, RequestMeta};

/// The most restrictive bucket a later layer (`authorize`) checked, carried on its response.
#[derive(Debug, Clone, Copy)]
pub struct QuotaSeen(pub Quota);

/// The stricter per-address class of a route, if it has one.
pub fn route_class(method: &Method, path: &str) -> Option<Class> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/auth/login" => Some(Class::Login),
        "/v1/auth/refresh" => Some(Class::Refresh),
        "/v1/auth/mfa" | "/v1/auth/step-up" => Some(Class::Mfa),
        "/v1/auth/password-reset" | "/v1/auth/password-reset/confirm" => Some(Class::PasswordReset),
        _ => None,
    }
}

/// 429 `rate_limited` in the error shape, with `Retry-After` and the bucket's headers.
pub fn refused(q: Quota) -> Response {
    let mut resp = ApiError {
        retry_after: Some(q.retry_after_seconds.max(1)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            format!(
                "too many requests ({} limit): retry after the number of seconds in Retry-After",
                q.class.as_str()
            ),
        )
    }
    .into_response();
    set_headers(&mut resp, q);
    resp.extensions_mut().insert(QuotaSeen(q));
    resp
}

fn set_headers(resp: &mut Response, q: Quota) {
    let h = resp.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", i64::from(q.limit)),
        ("ratelimit-remaining", i64::from(q.remaining)),
        ("ratelimit-reset", q.reset_seconds),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            h.insert(name, v);
        }
    }
}

/// The per-credential and per-tenant buckets of `p`, taken in one check. `Err`: the 429.
pub async fn principal_buckets(
    state: &AppState,
    meta: &RequestMeta,
    p: &Principal,
) -> Result<Option<Quota>, Response> {
    let core = &state.core;
    let limits = &core.settings.limits;
    let credential = match &p.credential {
        Credential::Session(s) => s.to_string(),
        Credential::ApiToken(t) => t.clone(),
    };
    let mut buckets = vec![Bucket {
        class: Class::Credential,
        key: credential,
        rate: limits.credential,
    }];
    if let Some(t) = &p.tenant_id {
        buckets.push(Bucket {
            class: Class::Tenant,
            key: t.to_string(),
            rate: limits.tenant,
        });
    }
    let d = ratelimit::check(core, meta, &buckets).await;
    match d.refused {
        Some(q) => Err(refused(q)),
        None => Ok(d.quota),
    }
}

/// Records the quota `authorize` saw on its response, for [`guard`] to merge.
pub fn carry(resp: &mut Response, quota: Option<Quota>) {
    if let Some(q) = quota {
        resp.extensions_mut().insert(QuotaSeen(q));
    }
}

/// 403 `ip_banned` with `Retry-After`.
fn banned(seconds: i64) -> Response {
    ApiError {
        retry_after: Some(seconds.max(1)),
        ..ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "ip_banned",
            "requests from this address are refused for a while after suspicious activity; \
             retry after the number of seconds in Retry-After",
        )
    }
    .into_response()
}

/// The early guard (a layer of the whole router, so unmatched paths pass it too).
pub async fn guard(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let core = &state.core;
    let Some(ip) = client_ip(&req, &core.settings.trusted_proxies) else {
        // No peer address (an embedding without connect info): no address to key on, but the
        // credential's and tenant's buckets still apply and show.
        let mut resp = next.run(req).await;
        if let Some(q) = resp.extensions().get::<QuotaSeen>().map(|q| q.0) {
            set_headers(&mut resp, q);
        }
        return resp;
    };
    let meta = request_meta(&req, &core.settings.trusted_proxies);
    let exempt = intrusion::exempt(core, &ip);

    // 1. A banned address gets nothing else.
    if !exempt && let Some(secs) = intrusion::banned(core, &meta, &ip).await {
        return banned(secs);
    }
    // 2. A scanner's probe bans at once.
    if !exempt && intrusion::is_scanner_probe(req.uri().path(), req.uri().query()) {
        let path = req.uri().path().to_owned();
        intrusion::ban(core, &meta, &ip, BanReason::ScannerPath, &path).await;
        let secs = i64::from(core.settings.limits.intrusion_ban_seconds);
        return banned(secs);
    }
    // 3. The address's buckets: every request, and the route's class.
    let template = matched.as_ref().map(|m| m.as_str().to_owned());
    let limits = &core.settings.limits;
    let mut buckets = vec![Bucket {
        class: Class::Ip,
        key: ip.to_string(),
        rate: limits.ip,
    }];
    if let Some(class) = template
        .as_deref()
        .and_then(|t| route_class(req.method(), t))
    {
        buckets.push(Bucket {
            class,
            key: ip.to_string(),
            rate: limits.rate(class),
        });
    }
    let d = ratelimit::check(core, &meta, &buckets).await;
    if let Some(q) = d.refused {
        return refused(q);
    }

    req.extensions_mut().insert(meta.clone());
    let mut resp = next.run(req).await;

    // 4. Intrusion signals: 401/403/404 answers count towards a ban.
    if !exempt && matches!(resp.status().as_u16(), 401 | 403 | 404) {
        let route = template.as_deref().unwrap_or("(unmatched)");
        intrusion::count_error(core, &meta, &ip, route).await;
    }
    // 5. The most restrictive bucket of the request.
    let later = resp.extensions().get::<QuotaSeen>().map(|q| q.0);
    let quota = match (d.quota, later) {
        (Some(a), Some(b)) => Some(a.tighter(b)),
        (a, b) => a.or(b),
    };
    if let Some(q) = quota {
        set_headers(&mut resp, q);
    }
    resp
}
