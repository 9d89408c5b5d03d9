//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/v1/openapi.json` (browsable at `/docs`). A test fails if a route of the table is missing
//! (`GET /metrics`, an operator endpoint behind its own token, is deliberately left out).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers::{
    api_tokens, audit, auth, compliance, customers, kyc, ledger, me, meta, mfa, password_reset,
    privacy, security, tenants, users,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Kasho API", description = "Multi-tenant secure fintech core. Conventions: docs/API.md."),
    paths(
        meta::healthz, meta::readyz, meta::jwks,
        auth::login, auth::refresh, auth::logout, auth::me,
        me::change_password,
        mfa::login, mfa::status, mfa::enrol, mfa::confirm, mfa::disable, mfa::regenerate_recovery_codes,
        password_reset::request, password_reset::confirm,
        tenants::create, tenants::list, tenants::get, tenants::suspend, tenants::reactivate,
        users::create, users::list, users::get, users::disable, users::enable, users::set_roles,
        audit::list,
        customers::create, customers::list, customers::get, customers::rectify,
        ledger::open_account, ledger::list_accounts, ledger::get_account, ledger::list_entries,
        ledger::freeze, ledger::unfreeze, ledger::close, ledger::set_overdraft,
        ledger::create_transfer, ledger::list_transfers, ledger::get_transfer,
        ledger::deposit, ledger::withdraw, ledger::reverse, ledger::create_batch,
        ledger::create_hold, ledger::get_hold, ledger::capture_hold, ledger::void_hold,
        kyc::get_limits, kyc::put_limits, kyc::submit, kyc::customer_kyc, kyc::list_submissions,
        kyc::approve, kyc::reject, kyc::download,
        compliance::processing_records,
        privacy::export, privacy::erase, privacy::restrict, privacy::unrestrict,
        security::step_up, security::list_sessions, security::revoke_session,
        security::revoke_other_sessions, security::get_policy, security::put_policy,
        security::unlock_user, security::list_events,
        api_tokens::create, api_tokens::list, api_tokens::revoke, api_tokens::rotate
    ),
    modifiers(&BearerAuth, &LimitResponses),
    tags(
        (name = "auth", description = "Sign-in, tokens and the current principal"),
        (name = "mfa", description = "The caller's multi-factor authentication (TOTP, recovery codes)"),
        (name = "tenants", description = "Tenants (platform admins)"),
        (name = "users", description = "Users and roles of a tenant"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "customers", description = "Customers and their personal data (masked unless revealed)"),
        (name = "ledger", description = "Accounts and money movements"),
        (name = "meta", description = "Health and public keys"),
        (name = "kyc", description = "KYC tiers, limits and verification"),
        (name = "compliance", description = "Records of processing and retention"),
        (name = "privacy", description = "Data-subject rights: export, erasure, restriction"),
        (name = "sessions", description = "The caller's sessions"),
        (name = "security", description = "Security policy and security events"),
        (name = "api-tokens", description = "API tokens for integrations (`kasho_…`), optionally IP-limited; request signing in docs/API.md"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

/// Every operation may answer 429 `rate_limited` (its buckets, see docs/API.md) and 403
/// `ip_banned` (an intrusion ban): both are added wherever the handler does not already
/// document that status.
struct LimitResponses;

impl Modify for LimitResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            )
        };
        let limited = error("Rate limited (`rate_limited`): retry after `Retry-After` seconds");
        let banned = error("This address is banned for a while (`ip_banned`, see `Retry-After`)");
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                responses
                    .entry("429".to_owned())
                    .or_insert_with(|| limited.clone());
                responses
                    .entry("403".to_owned())
                    .or_insert_with(|| banned.clone());
            }
        }
    }
}
