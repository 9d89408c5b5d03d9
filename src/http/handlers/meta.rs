//! Unauthenticated service endpoints: liveness and the public signing keys.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use crate::http::AppState;
use crate::http::views::HealthView;

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, body = HealthView)))]
pub async fn healthz() -> Json<HealthView> {
    Json(HealthView { status: "ok" })
}

/// The public keys that verify access tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta", responses((status = 200, description = "A JWK set", body = serde_json::Value)))]
pub async fn jwks(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.core.tokens.jwks().clone())
}
