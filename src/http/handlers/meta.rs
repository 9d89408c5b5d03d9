//! Unauthenticated service endpoints: liveness, readiness, the public signing keys, and the
//! Prometheus metrics (behind `metrics_token` on the main listener, or on `metrics_listen`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::http::views::{HealthView, ReadyChecksView, ReadyView};
use crate::service::Core;

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealth", tag = "meta", responses((status = 200, body = HealthView)))]
pub async fn healthz() -> Json<HealthView> {
    Json(HealthView { status: "ok" })
}

/// Readiness: the database answers, its migrations are the ones this binary embeds, and Redis
/// answers when configured. 503 names the failing check, nothing more.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadiness", tag = "meta", responses(
    (status = 200, description = "Ready", body = ReadyView),
    (status = 503, description = "A dependency is not ready", body = ReadyView)
))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let r = crate::service::health::readiness(&state.core).await;
    let ready = r.ready();
    let view = ReadyView {
        status: if ready { "ready" } else { "not_ready" },
        checks: ReadyChecksView {
            database: r.database,
            migrations: r.migrations,
            redis: r.redis,
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(view)).into_response()
}

/// The public keys that verify access tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", operation_id = "getJwks", tag = "meta", responses((status = 200, description = "A JWK set", body = serde_json::Value)))]
pub async fn jwks(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.core.tokens.jwks().clone())
}

/// Prometheus metrics on the main listener (the middleware has checked `metrics_token`). Not in
/// the public OpenAPI document: it is an operator endpoint, not part of the API contract.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    metrics_response(&state.core)
}

/// The metrics in the Prometheus text format, with the pool gauges taken now.
pub fn metrics_response(core: &Core) -> Response {
    let pool = core.store.pool_stats();
    crate::observability::db_pool(pool.connections, pool.idle);
    match crate::observability::render() {
        Some(text) => {
            let mut resp = text.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "metrics_unavailable",
            "no metrics recorder is installed in this process",
        )
        .into_response(),
    }
}
