//! What a route requires of its caller ([`Access`]) and one row of the route table
//! ([`RouteDef`]): the types the table in `routes.rs`, the shared state and the authorisation
//! middleware all read, kept apart from the table so none of them imports the handlers.

use axum::http::Method;

use crate::domain::authz::Permission;

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, JWKS, login, refresh).
    Public,
    /// Any signed-in principal.
    Authenticated,
    /// A principal whose roles grant this permission.
    Permission(Permission),
    /// Operators' scrapers: `Authorization: Bearer <metrics_token>`; the route answers 404 when
    /// no `metrics_token` is configured.
    MetricsToken,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct RouteDef {
    pub method: Method,
    /// The axum/OpenAPI path template, e.g. `/v1/users/{id}`.
    pub path: &'static str,
    pub access: Access,
    /// The audit action recorded for this route, e.g. `user.create`.
    pub action: &'static str,
    /// A body limit of its own, above the server-wide `max_body_bytes` (document uploads).
    pub body_limit: Option<usize>,
}
