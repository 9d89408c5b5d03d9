//! The route table: every API route with the access it requires and the audit action it
//! records. The router is built from this table and the authorisation middleware enforces it,
//! so a route cannot exist without an entry (and an entry names exactly one permission).

use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};

pub use super::access::{Access, RouteDef};
use super::handlers::{
    api_tokens, audit, auth, compliance, customers, invitations, kyc, ledger, me, meta, mfa,
    password_reset, privacy, security, staff_notes, tenants, users,
};
use super::state::AppState;
use crate::domain::authz::Permission;

pub(super) struct Route {
    pub def: RouteDef,
    pub handler: MethodRouter<std::sync::Arc<AppState>>,
}

fn route<H, T>(
    method: Method,
    path: &'static str,
    access: Access,
    action: &'static str,
    handler: H,
) -> Route
where
    H: axum::handler::Handler<T, std::sync::Arc<AppState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    Route {
        def: RouteDef {
            method,
            path,
            access,
            action,
            body_limit: None,
        },
        handler: on(filter, handler),
    }
}

pub(super) fn all() -> Vec<Route> {
    use Access::{Authenticated, Public};
    use Permission as P;
    let perm = Access::Permission;
    vec![
        route(
            Method::GET,
            "/healthz",
            Public,
            "health.read",
            meta::healthz,
        ),
        route(Method::GET, "/readyz", Public, "health.ready", meta::readyz),
        route(
            Method::GET,
            "/metrics",
            Access::MetricsToken,
            "metrics.read",
            meta::metrics,
        ),
        route(
            Method::GET,
            "/.well-known/jwks.json",
            Public,
            "jwks.read",
            meta::jwks,
        ),
        route(
            Method::POST,
            "/v1/auth/login",
            Public,
            "auth.login",
            auth::login,
        ),
        route(
            Method::POST,
            "/v1/auth/refresh",
            Public,
            "auth.refresh",
            auth::refresh,
        ),
        route(
            Method::POST,
            "/v1/auth/logout",
            Authenticated,
            "auth.logout",
            auth::logout,
        ),
        route(
            Method::POST,
            "/v1/auth/password-reset",
            Public,
            "auth.password_reset.request",
            password_reset::request,
        ),
        route(
            Method::POST,
            "/v1/auth/password-reset/confirm",
            Public,
            "auth.password_reset.confirm",
            password_reset::confirm,
        ),
        route(Method::GET, "/v1/me", Authenticated, "me.read", auth::me),
        // Multi-factor authentication (TOTP and recovery codes).
        route(Method::POST, "/v1/auth/mfa", Public, "auth.mfa", mfa::login),
        route(
            Method::GET,
            "/v1/me/mfa",
            Authenticated,
            "mfa.read",
            mfa::status,
        ),
        route(
            Method::POST,
            "/v1/me/mfa/totp",
            Authenticated,
            "mfa.enrol",
            mfa::enrol,
        ),
        route(
            Method::POST,
            "/v1/me/mfa/totp/confirm",
            Authenticated,
            "mfa.confirm",
            mfa::confirm,
        ),
        route(
            Method::DELETE,
            "/v1/me/mfa/totp",
            Authenticated,
            "mfa.disable",
            mfa::disable,
        ),
        route(
            Method::POST,
            "/v1/me/mfa/recovery-codes",
            Authenticated,
            "mfa.recovery_codes.regenerate",
            mfa::regenerate_recovery_codes,
        ),
        route(
            Method::POST,
            "/v1/me/password",
            Authenticated,
            "user.password.change",
            me::change_password,
        ),
        route(
            Method::POST,
            "/v1/auth/step-up",
            Authenticated,
            "auth.step_up",
            security::step_up,
        ),
        route(
            Method::GET,
            "/v1/me/sessions",
            Authenticated,
            "session.list",
            security::list_sessions,
        ),
        route(
            Method::DELETE,
            "/v1/me/sessions/{id}",
            Authenticated,
            "session.revoke",
            security::revoke_session,
        ),
        route(
            Method::POST,
            "/v1/me/sessions/revoke-others",
            Authenticated,
            "session.revoke_others",
            security::revoke_other_sessions,
        ),
        route(
            Method::GET,
            "/v1/security/policy",
            perm(P::SecurityRead),
            "security.policy.read",
            security::get_policy,
        ),
        route(
            Method::PUT,
            "/v1/security/policy",
            perm(P::SecurityConfigure),
            "security.policy.update",
            security::put_policy,
        ),
        route(
            Method::GET,
            "/v1/security-events",
            perm(P::SecurityRead),
            "security_event.list",
            security::list_events,
        ),
        route(
            Method::POST,
            "/v1/tenants",
            perm(P::TenantsWrite),
            "tenant.create",
            tenants::create,
        ),
        route(
            Method::GET,
            "/v1/tenants",
            perm(P::TenantsRead),
            "tenant.list",
            tenants::list,
        ),
        route(
            Method::GET,
            "/v1/tenants/{id}",
            perm(P::TenantsRead),
            "tenant.read",
            tenants::get,
        ),
        route(
            Method::POST,
            "/v1/tenants/{id}/suspend",
            perm(P::TenantsWrite),
            "tenant.suspend",
            tenants::suspend,
        ),
        route(
            Method::POST,
            "/v1/tenants/{id}/reactivate",
            perm(P::TenantsWrite),
            "tenant.reactivate",
            tenants::reactivate,
        ),
        // Restoring a tenant's administration: two platform admins (service::break_glass).
        route(
            Method::POST,
            "/v1/tenants/{id}/break-glass",
            perm(P::TenantsWrite),
            "tenant.break_glass.request",
            tenants::break_glass_request,
        ),
        route(
            Method::GET,
            "/v1/tenants/{id}/break-glass",
            perm(P::TenantsRead),
            "tenant.break_glass.list",
            tenants::break_glass_list,
        ),
        route(
            Method::POST,
            "/v1/tenants/{id}/break-glass/{request_id}/approve",
            perm(P::TenantsWrite),
            "tenant.break_glass.approve",
            tenants::break_glass_approve,
        ),
        route(
            Method::POST,
            "/v1/users",
            perm(P::UsersWrite),
            "user.create",
            users::create,
        ),
        route(
            Method::POST,
            "/v1/users/{id}/reinvite",
            perm(P::UsersWrite),
            "user.reinvite",
            users::reinvite,
        ),
        // The invitation's token is the credential.
        route(
            Method::POST,
            "/v1/invitations/accept",
            Public,
            "invitation.accept",
            invitations::accept,
        ),
        route(
            Method::GET,
            "/v1/users",
            perm(P::UsersRead),
            "user.list",
            users::list,
        ),
        route(
            Method::GET,
            "/v1/users/{id}",
            perm(P::UsersRead),
            "user.read",
            users::get,
        ),
        route(
            Method::POST,
            "/v1/users/{id}/disable",
            perm(P::UsersWrite),
            "user.disable",
            users::disable,
        ),
        route(
            Method::POST,
            "/v1/users/{id}/enable",
            perm(P::UsersWrite),
            "user.enable",
            users::enable,
        ),
        route(
            Method::POST,
            "/v1/users/{id}/mfa/reset",
            perm(P::UsersWrite),
            "user.mfa.reset",
            users::reset_mfa,
        ),
        route(
            Method::POST,
            "/v1/users/{id}/unlock",
            perm(P::UsersWrite),
            "user.unlock",
            security::unlock_user,
        ),
        route(
            Method::PUT,
            "/v1/users/{id}/roles",
            perm(P::UsersWrite),
            "user.roles.update",
            users::set_roles,
        ),
        route(
            Method::GET,
            "/v1/audit-events",
            perm(P::AuditRead),
            "audit.list",
            audit::list,
        ),
        route(
            Method::POST,
            "/v1/customers",
            perm(P::CustomersWrite),
            "customer.create",
            customers::create,
        ),
        route(
            Method::GET,
            "/v1/customers",
            perm(P::CustomersRead),
            "customer.list",
            customers::list,
        ),
        route(
            Method::GET,
            "/v1/customers/{id}",
            perm(P::CustomersRead),
            "customer.read",
            customers::get,
        ),
        route(
            Method::PATCH,
            "/v1/customers/{id}",
            perm(P::CustomersWrite),
            "customer.update",
            customers::rectify,
        ),
        route(
            Method::POST,
            "/v1/accounts",
            perm(P::AccountsWrite),
            "account.open",
            ledger::open_account,
        ),
        route(
            Method::GET,
            "/v1/accounts",
            perm(P::AccountsRead),
            "account.list",
            ledger::list_accounts,
        ),
        route(
            Method::GET,
            "/v1/accounts/{id}",
            perm(P::AccountsRead),
            "account.read",
            ledger::get_account,
        ),
        route(
            Method::GET,
            "/v1/accounts/{id}/entries",
            perm(P::AccountsRead),
            "account.entries",
            ledger::list_entries,
        ),
        route(
            Method::POST,
            "/v1/accounts/{id}/freeze",
            perm(P::AccountsFreeze),
            "account.freeze",
            ledger::freeze,
        ),
        route(
            Method::POST,
            "/v1/accounts/{id}/unfreeze",
            perm(P::AccountsFreeze),
            "account.unfreeze",
            ledger::unfreeze,
        ),
        route(
            Method::POST,
            "/v1/accounts/{id}/close",
            perm(P::AccountsConfigure),
            "account.close",
            ledger::close,
        ),
        route(
            Method::PUT,
            "/v1/accounts/{id}/overdraft",
            perm(P::AccountsConfigure),
            "account.overdraft.set",
            ledger::set_overdraft,
        ),
        route(
            Method::POST,
            "/v1/transfers",
            perm(P::TransfersCreate),
            "transfer.create",
            ledger::create_transfer,
        ),
        route(
            Method::GET,
            "/v1/transfers",
            perm(P::TransfersRead),
            "transfer.list",
            ledger::list_transfers,
        ),
        route(
            Method::GET,
            "/v1/transfers/{id}",
            perm(P::TransfersRead),
            "transfer.read",
            ledger::get_transfer,
        ),
        route(
            Method::POST,
            "/v1/deposits",
            perm(P::CashWrite),
            "deposit.create",
            ledger::deposit,
        ),
        route(
            Method::POST,
            "/v1/withdrawals",
            perm(P::CashWrite),
            "withdrawal.create",
            ledger::withdraw,
        ),
        route(
            Method::POST,
            "/v1/transfers/batch",
            perm(P::TransfersCreate),
            "transfer.batch",
            ledger::create_batch,
        ),
        route(
            Method::POST,
            "/v1/transfers/{id}/reverse",
            perm(P::TransfersReverse),
            "reversal.create",
            ledger::reverse,
        ),
        route(
            Method::POST,
            "/v1/holds",
            perm(P::HoldsWrite),
            "hold.create",
            ledger::create_hold,
        ),
        route(
            Method::GET,
            "/v1/holds/{id}",
            perm(P::AccountsRead),
            "hold.read",
            ledger::get_hold,
        ),
        route(
            Method::POST,
            "/v1/holds/{id}/capture",
            perm(P::HoldsWrite),
            "capture.create",
            ledger::capture_hold,
        ),
        route(
            Method::POST,
            "/v1/holds/{id}/void",
            perm(P::HoldsWrite),
            "hold.void",
            ledger::void_hold,
        ),
        // KYC: limits, verification workflow, documents.
        route(
            Method::GET,
            "/v1/kyc/limits",
            perm(P::KycRead),
            "kyc.limits.read",
            kyc::get_limits,
        ),
        route(
            Method::PUT,
            "/v1/kyc/limits",
            perm(P::KycConfigure),
            "kyc.limits.update",
            kyc::put_limits,
        ),
        with_body_limit(
            route(
                Method::POST,
                "/v1/customers/{id}/kyc/submissions",
                perm(P::KycSubmit),
                "kyc.submission.create",
                kyc::submit,
            ),
            crate::domain::kyc::SUBMISSION_BODY_LIMIT,
        ),
        route(
            Method::GET,
            "/v1/customers/{id}/kyc",
            perm(P::KycRead),
            "kyc.read",
            kyc::customer_kyc,
        ),
        route(
            Method::GET,
            "/v1/kyc/submissions",
            perm(P::KycRead),
            "kyc.submission.list",
            kyc::list_submissions,
        ),
        route(
            Method::POST,
            "/v1/kyc/submissions/{id}/approve",
            perm(P::KycDecide),
            "kyc.submission.approve",
            kyc::approve,
        ),
        route(
            Method::POST,
            "/v1/kyc/submissions/{id}/reject",
            perm(P::KycDecide),
            "kyc.submission.reject",
            kyc::reject,
        ),
        route(
            Method::GET,
            "/v1/kyc/documents/{id}/content",
            perm(P::KycDocumentsRead),
            "kyc.document.read",
            kyc::download,
        ),
        route(
            Method::GET,
            "/v1/compliance/processing-records",
            perm(P::ComplianceRead),
            "compliance.processing_records.read",
            compliance::processing_records,
        ),
        // Staff-only notes (tipping off): sealed, read by COMPLIANCE_OFFICERs, each read audited.
        route(
            Method::GET,
            "/v1/staff-notes",
            perm(P::StaffNotesRead),
            "staff_note.list",
            staff_notes::list,
        ),
        route(
            Method::GET,
            "/v1/staff-notes/{id}",
            perm(P::StaffNotesRead),
            "staff_note.read",
            staff_notes::get,
        ),
        // Data-subject rights.
        route(
            Method::GET,
            "/v1/customers/{id}/export",
            perm(P::CustomersExport),
            "customer.export",
            privacy::export,
        ),
        route(
            Method::POST,
            "/v1/customers/{id}/erase",
            perm(P::CustomersErase),
            "customer.erase",
            privacy::erase,
        ),
        route(
            Method::POST,
            "/v1/customers/{id}/restrict",
            perm(P::CustomersRestrict),
            "customer.restrict",
            privacy::restrict,
        ),
        route(
            Method::POST,
            "/v1/customers/{id}/unrestrict",
            perm(P::CustomersRestrict),
            "customer.unrestrict",
            privacy::unrestrict,
        ),
        // API tokens (secrets shown once; creating and rotating need step-up).
        route(
            Method::POST,
            "/v1/api-tokens",
            perm(P::ApiTokensManage),
            "api_token.create",
            api_tokens::create,
        ),
        route(
            Method::GET,
            "/v1/api-tokens",
            perm(P::ApiTokensManage),
            "api_token.list",
            api_tokens::list,
        ),
        route(
            Method::DELETE,
            "/v1/api-tokens/{id}",
            perm(P::ApiTokensManage),
            "api_token.revoke",
            api_tokens::revoke,
        ),
        route(
            Method::POST,
            "/v1/api-tokens/{id}/rotate",
            perm(P::ApiTokensManage),
            "api_token.rotate",
            api_tokens::rotate,
        ),
    ]
}

/// Routes a user may call before enrolling in MFA when their role requires it: who they are,
/// signing out, and enrolment itself.
pub const ALLOWED_BEFORE_MFA: &[(&str, &str)] = &[
    ("GET", "/v1/me"),
    ("POST", "/v1/auth/logout"),
    ("GET", "/v1/me/mfa"),
    ("POST", "/v1/me/mfa/totp"),
    ("POST", "/v1/me/mfa/totp/confirm"),
];

/// Whether `method path` (a route template) is in [`ALLOWED_BEFORE_MFA`].
pub fn allowed_before_mfa(method: &Method, path: &str) -> bool {
    ALLOWED_BEFORE_MFA
        .iter()
        .any(|(m, p)| *m == method.as_str() && *p == path)
}

/// A route whose body may be larger than the server-wide `max_body_bytes` (document uploads).
/// The innermost body limit wins, so this one applies to this route alone.
fn with_body_limit(mut r: Route, limit: usize) -> Route {
    r.handler = r.handler.layer(axum::extract::DefaultBodyLimit::max(limit));
    r.def.body_limit = Some(limit);
    r
}

/// The table alone (for docs, tests and tools).
pub fn table() -> Vec<RouteDef> {
    all().into_iter().map(|r| r.def).collect()
}
