//! The state every handler and middleware of the HTTP layer shares: the service core, the
//! server-wide body limit and the route table's rows by method and path. A leaf of `http/`: it
//! imports no handler, so nothing in `http/` imports `http/mod.rs` (the router's assembly).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::Method;

use super::access::RouteDef;
use crate::service::Core;

/// Shared state of the HTTP layer.
pub struct AppState {
    pub core: Arc<Core>,
    /// The server-wide body limit (the middleware reads signed requests' bodies itself).
    pub max_body_bytes: usize,
    pub(super) routes: HashMap<(Method, &'static str), RouteDef>,
}

impl AppState {
    /// The table row of a matched route.
    pub fn route(&self, method: &Method, path: &str) -> Option<&RouteDef> {
        self.routes
            .iter()
            .find(|((m, p), _)| m == method && *p == path)
            .map(|(_, d)| d)
    }
}
