//! Route handlers, one module per resource. Each is a thin translation: parse, call the
//! service, render. The `#[utoipa::path]` beside each handler is its OpenAPI entry.

pub mod api_tokens;
pub mod audit;
pub mod auth;
pub mod compliance;
pub mod customers;
pub mod invitations;
pub mod kyc;
pub mod ledger;
pub mod me;
pub mod meta;
pub mod mfa;
pub mod password_reset;
pub mod privacy;
pub mod security;
pub mod staff_notes;
pub mod tenants;
pub mod users;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::context::AuditRecorded;

/// A successful state change whose audit record the use case wrote in its own transaction.
pub struct Recorded<T>(pub StatusCode, pub T);

impl<T: IntoResponse> IntoResponse for Recorded<T> {
    fn into_response(self) -> Response {
        let mut resp = (self.0, self.1).into_response();
        resp.extensions_mut().insert(AuditRecorded);
        resp
    }
}
