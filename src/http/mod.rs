//! The REST API. Handlers translate HTTP into service calls and results into JSON; rules live
//! in `service` and `domain`. See docs/API.md for the conventions.

pub mod access;
mod client_cert;
pub mod context;
pub mod cors;
pub mod error;
pub mod extract;
mod handlers;
mod large_json;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod state;
mod storage;
mod timeout;
pub mod views;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::service::Core;
use state::AppState;

/// The separate metrics listener's application (`metrics_listen`): only `GET /metrics`, no
/// authentication (bind it to a private address).
pub fn metrics_router(core: Arc<Core>) -> Router {
    let hsts = middleware::Hsts(core.settings.hsts);
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(core): axum::extract::State<Arc<Core>>| async move {
                    handlers::meta::metrics_response(&core)
                },
            ),
        )
        .with_state(core)
        .fallback(middleware::not_found)
        .layer(axum::middleware::from_fn_with_state(
            hsts,
            middleware::security_headers,
        ))
}

/// Builds the whole HTTP application. From the outside in: request id and access log,
/// security headers, the error shape for answers made without it (and the answers to the wire
/// guard's refused heads), rate limits and bans, request checks (path encoding, `Host`, HTTP/2 header
/// size), CORS, the request time limit, panic catching, the body limit, storage health, then the
/// routes (each behind `authorize`).
pub fn router(core: Arc<Core>, max_body_bytes: usize) -> Router {
    let hsts = middleware::Hsts(core.settings.hsts);
    let all = routes::all();
    let state = Arc::new(AppState {
        core,
        max_body_bytes,
        routes: all
            .iter()
            .map(|r| ((r.def.method.clone(), r.def.path), r.def.clone()))
            .collect(),
    });
    let mut api: Router<Arc<AppState>> = Router::new();
    for r in all {
        api = api.route(r.def.path, r.handler);
    }
    let api = api
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authorize,
        ))
        .with_state(state.clone());
    let timeout = std::time::Duration::from_secs(state.core.settings.request_timeout_seconds);
    let max_header_bytes = state.core.settings.max_header_bytes;

    Router::new()
        .merge(api)
        .merge(
            SwaggerUi::new("/docs")
                .external_url_unchecked("/v1/openapi.json", openapi::document())
                // Swagger UI would send the document to validator.swagger.io (an outside host)
                // and show its badge: off.
                .config(utoipa_swagger_ui::Config::default().validator_url("none")),
        )
        // No OAuth2 flow is configured, so its redirect page (a script that posts whatever
        // arrives in its URL to its opener) is not served.
        .route(
            "/docs/oauth2-redirect.html",
            axum::routing::get(middleware::not_found),
        )
        .route(
            "/docs/oauth2-redirect.js",
            axum::routing::get(middleware::not_found),
        )
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            storage::track,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            timeout::request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::cors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            max_header_bytes,
            wire::check_request,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::guard,
        ))
        .layer(axum::middleware::from_fn(middleware::shape_errors))
        .layer(axum::middleware::from_fn_with_state(
            hsts,
            middleware::security_headers,
        ))
        .layer(axum::middleware::from_fn(middleware::request_id))
}
