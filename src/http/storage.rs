//! Storage health read off the answers: a 503 `storage_unavailable` marks storage failing, a
//! state-changing request that succeeds marks it writing again (see
//! [`StorageHealth`](crate::service::health::StorageHealth), which `/readyz` reports). One
//! layer around every route, so no use case has to remember it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ErrorCode;
use super::state::AppState;

pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let resp = next.run(req).await;
    let core = &state.core;
    match resp.extensions().get::<ErrorCode>() {
        Some(ErrorCode("storage_unavailable")) => core.storage.failed(core.clock.now()),
        _ if mutating && resp.status().is_success() => core.storage.succeeded(),
        _ => {}
    }
    resp
}
