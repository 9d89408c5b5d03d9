//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/v1/openapi.json` (browsable at `/docs`, printed by `kasho openapi`). Each operation names
//! itself (`operation_id`, verb + Resource: docs/API.md); [`document`] adds the shared contract
//! (error answers, a description on every response, bounds from the checks' constants). Tests
//! fail if a route of the table is missing (`GET /metrics`, an operator endpoint behind its own
//! token, is deliberately left out), an id repeats, a response is undescribed, a bound drifts
//! from its constant, or the document differs from its snapshot `docs/openapi.json`;
//! `scripts/openapi-validate` runs openapi-spec-validator on it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers::{
    api_tokens, audit, auth, compliance, customers, invitations, kyc, ledger, me, meta, mfa,
    password_reset, privacy, security, staff_notes, tenants, users,
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
        tenants::break_glass_request, tenants::break_glass_list, tenants::break_glass_approve,
        users::create, users::list, users::get, users::disable, users::enable, users::set_roles, users::reset_mfa,
        users::reinvite, invitations::accept,
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
        staff_notes::list, staff_notes::get,
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
        (name = "compliance", description = "Records of processing and retention; staff-only notes"),
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

/// The id prefix of the objects each list returns (what `starting_after` must be).
const CURSOR_PREFIXES: &[(&str, &str)] = &[
    ("/v1/tenants", "ten"),
    ("/v1/users", "usr"),
    ("/v1/audit-events", "aud"),
    ("/v1/security-events", "aud"),
    ("/v1/customers", "cus"),
    ("/v1/accounts", "acc"),
    ("/v1/accounts/{id}/entries", "ent"),
    ("/v1/transfers", "trf"),
    ("/v1/kyc/submissions", "kyc"),
    ("/v1/me/sessions", "ses"),
    ("/v1/staff-notes", "stn"),
    ("/v1/tenants/{id}/break-glass", "brk"),
];

fn error_response(description: &str) -> serde_json::Value {
    serde_json::json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Adds the shared error answer `status` to `op`, or gives this description to the handler's own
/// entry for that status when it was written without one.
fn add_response(op: &mut serde_json::Value, status: &str, description: &str) {
    if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
        let entry = responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
        describe(entry, description);
    }
}

/// Sets `response`'s description when it has none (utoipa omits an empty one, and OpenAPI
/// requires it).
fn describe(response: &mut serde_json::Value, description: &str) {
    if let Some(r) = response.as_object_mut()
        && !r.contains_key("$ref")
        && r.get("description")
            .and_then(|d| d.as_str())
            .is_none_or(|d| d.trim().is_empty())
    {
        r.insert("description".into(), description.into());
    }
}

/// What a response of this status means when its handler says nothing more (OpenAPI requires a
/// description on every response). Statuses the shared contract adds get their own wording in
/// [`apply_contract`]; this covers the rest, so a new route cannot publish an undescribed answer.
fn default_description(status: &str) -> String {
    match status {
        "200" => "Success".to_owned(),
        "201" => "Created".to_owned(),
        "202" => "Accepted".to_owned(),
        "204" => "Done (no content)".to_owned(),
        "400" => "Invalid request (the field at fault is in `param`)".to_owned(),
        "401" => "Not authenticated (missing, invalid or expired credential)".to_owned(),
        "403" => "Not permitted".to_owned(),
        "404" => "No such object (or not visible to the caller)".to_owned(),
        "409" => "Conflicts with the object's current state (the `code` says which)".to_owned(),
        "413" => "The request body is larger than the limit".to_owned(),
        "415" => "The request body is not `application/json`".to_owned(),
        "422" => "Well-formed but refused on business grounds (the `code` says which)".to_owned(),
        "429" => "Too many requests (see `Retry-After`)".to_owned(),
        other => other
            .parse::<u16>()
            .ok()
            .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Response")
            .to_owned(),
    }
}

/// Gives every response of every operation a description (see [`default_description`]).
fn describe_responses(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for item in paths.values_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|i| i.values_mut())
        {
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                describe(response, &default_description(status));
            }
        }
    }
}

/// The contract every operation shares, added to the generated document (see [`document`]) so it
/// describes what the server really answers (checked by `scripts/api-fuzz`):
///
/// - the error answers each operation can give because of the layers every route sits behind:
///   401/403 (`authorize`, unless public), 400/413/415 (a JSON body: strict parsing, size,
///   media type), 400 (query or path parameters), 404 (an object named in the path), 429 (rate
///   limits and throttles), each with the one error shape;
/// - the bounds the handlers enforce on shared parameters: `limit` 1..=100, `starting_after`
///   an id of the listed type, `currency` one of the supported ISO 4217 codes.
fn apply_contract(doc: &mut serde_json::Value) {
    use super::routes::Access;
    let table = super::routes::table();
    let currencies: Vec<&str> = crate::domain::currency::codes().collect();
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let def = table
                .iter()
                .find(|d| d.path == path && d.method.as_str().eq_ignore_ascii_case(method));
            let public = def.is_some_and(|d| d.access == Access::Public);
            if !public {
                add_response(
                    op,
                    "401",
                    "Not authenticated (missing, invalid or expired credential)",
                );
                add_response(op, "403", "Not permitted");
            }
            if op.get("requestBody").is_some() {
                add_response(
                    op,
                    "400",
                    "Invalid request (the field at fault is in `param`)",
                );
                add_response(op, "413", "The request body is larger than the limit");
                add_response(op, "415", "The request body is not `application/json`");
            }
            let params = op
                .get_mut("parameters")
                .and_then(|p| p.as_array_mut())
                .map(std::mem::take)
                .unwrap_or_default();
            let has_path_param = params.iter().any(|p| p["in"] == "path");
            let mut params = params;
            for p in &mut params {
                let name = p["name"].as_str().unwrap_or("").to_owned();
                let Some(schema) = p.get_mut("schema").and_then(|s| s.as_object_mut()) else {
                    continue;
                };
                match name.as_str() {
                    "limit" => {
                        schema.insert("minimum".into(), 1.into());
                        schema.insert("maximum".into(), 100.into());
                    }
                    "starting_after" => {
                        let pattern = if path == "/v1/api-tokens" {
                            Some("^atk_[0-9a-fA-F]{32}$".to_owned())
                        } else {
                            CURSOR_PREFIXES
                                .iter()
                                .find(|(p, _)| p == path)
                                .map(|(_, prefix)| format!("^{prefix}_[0-9a-f]{{32}}$"))
                        };
                        if let Some(pattern) = pattern {
                            schema.insert("pattern".into(), pattern.into());
                        }
                    }
                    "currency" => {
                        schema.insert("enum".into(), serde_json::json!(currencies));
                    }
                    "occurred_after" | "occurred_before" | "created_after" | "created_before" => {
                        schema.insert("format".into(), "date-time".into());
                    }
                    "severity" => {
                        schema.insert("enum".into(), serde_json::json!(["low", "medium", "high"]));
                    }
                    "type" if path == "/v1/security-events" => {
                        let types: Vec<&str> = crate::domain::security::SecurityEvent::ALL
                            .iter()
                            .map(|e| e.as_str())
                            .collect();
                        schema.insert("enum".into(), serde_json::json!(types));
                    }
                    "target_id" if path == "/v1/staff-notes" => {
                        schema.insert("pattern".into(), "^(acc|cus|kyc)_[0-9a-f]{32}$".into());
                    }
                    "status" if path == "/v1/kyc/submissions" => {
                        schema.insert(
                            "enum".into(),
                            serde_json::json!(["submitted", "approved", "rejected"]),
                        );
                    }
                    // 1 to 255 printable ASCII characters, no spaces.
                    "Idempotency-Key" => {
                        schema.insert("pattern".into(), "^[!-~]{1,255}$".into());
                    }
                    _ => {}
                }
            }
            if !params.is_empty() {
                add_response(op, "400", "Invalid parameter (named in `param`)");
            }
            if has_path_param {
                add_response(op, "404", "No such object (or not visible to the caller)");
            }
            if let Some(slot) = op.get_mut("parameters") {
                *slot = serde_json::Value::Array(params);
            }
            add_response(op, "429", "Too many requests (see `Retry-After`)");
        }
    }
    apply_field_bounds(doc, &currencies);
}

/// The bounds the handlers and the domain enforce on request fields, stated in the schemas
/// (the figures come from the same constants the checks use: a changed limit changes the
/// document, and the snapshot test in tests/integration/openapi.rs shows it).
fn field_bounds() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    use crate::domain::kyc::{MAX_DOCUMENTS, MAX_TIER};
    use crate::domain::ledger::{
        HOLD_MAX_SECONDS, HOLD_MIN_SECONDS, MAX_AMOUNT, MAX_COUNTERPARTY_FIELD_LEN,
        MAX_CREDIT_LEGS, MAX_DESCRIPTION_LEN, MAX_METADATA_KEY_LEN, MAX_METADATA_KEYS,
        MAX_METADATA_VALUE_LEN,
    };
    use crate::domain::security::bounds as b;
    use crate::service::ledger::MAX_BATCH_TRANSFERS;
    use serde_json::json;
    let amount = json!({"minimum": 1, "maximum": MAX_AMOUNT});
    let range = |(lo, hi): (u32, u32)| json!({"minimum": lo, "maximum": hi});
    let email = json!({"format": "email", "maxLength": 254});
    let mut v = vec![
        ("CreateTransferRequest", "amount", amount.clone()),
        ("CreditLeg", "amount", amount.clone()),
        ("CashRequest", "amount", amount.clone()),
        ("CreateHoldRequest", "amount", amount.clone()),
        ("CaptureRequest", "amount", amount.clone()),
        ("ReverseRequest", "amount", amount),
        (
            "OverdraftRequest",
            "overdraft_limit",
            json!({"minimum": 0, "maximum": MAX_AMOUNT}),
        ),
        (
            "CreateHoldRequest",
            "expires_in_seconds",
            json!({"minimum": HOLD_MIN_SECONDS, "maximum": HOLD_MAX_SECONDS}),
        ),
        (
            "BatchRequest",
            "transfers",
            json!({"minItems": 1, "maxItems": MAX_BATCH_TRANSFERS}),
        ),
        (
            "RotateApiTokenRequest",
            "overlap_seconds",
            json!({"minimum": 0, "maximum": 86_400}),
        ),
        (
            "CreateApiTokenRequest",
            "name",
            json!({"minLength": 1, "maxLength": 100, "pattern": "\\S"}),
        ),
        (
            "CreateApiTokenRequest",
            "expires_in",
            json!({"enum": ["24h", "30d", "90d", "180d", "365d"]}),
        ),
        (
            "PutLimitsRequest",
            "tiers",
            json!({"minItems": 1, "maxItems": MAX_TIER + 1}),
        ),
        (
            "CreateTransferRequest",
            "credits",
            json!({"minItems": 1, "maxItems": MAX_CREDIT_LEGS}),
        ),
        (
            "ReverseRequest",
            "legs",
            json!({"minItems": 1, "maxItems": MAX_CREDIT_LEGS}),
        ),
        (
            "SubmitRequest",
            "requested_tier",
            json!({"minimum": 0, "maximum": crate::domain::kyc::MAX_TIER}),
        ),
        (
            "SubmitRequest",
            "documents",
            json!({"minItems": 1, "maxItems": MAX_DOCUMENTS}),
        ),
        (
            "DocumentUpload",
            "document_type",
            json!({"enum": ["passport", "national_id", "drivers_licence", "proof_of_address", "selfie"]}),
        ),
        (
            "DocumentUpload",
            "content_type",
            json!({"enum": ["application/pdf", "image/png", "image/jpeg"]}),
        ),
        (
            "TierLimitsBody",
            "tier",
            json!({"minimum": 0, "maximum": crate::domain::kyc::MAX_TIER}),
        ),
        (
            "ErasureRequest",
            "reason",
            json!({"enum": crate::service::privacy::ERASURE_REASONS}),
        ),
        (
            "RestrictionRequest",
            "reason",
            json!({"enum": crate::service::privacy::RESTRICTION_REASONS
                .iter()
                .chain(crate::service::privacy::UNRESTRICTION_REASONS)
                .collect::<std::collections::BTreeSet<_>>()}),
        ),
        (
            "CreateTenantRequest",
            "slug",
            json!({"pattern": "^[a-z][a-z0-9-]{1,38}[a-z0-9]$"}),
        ),
        ("LoginRequest", "email", email.clone()),
        ("PasswordResetRequest", "email", email.clone()),
        ("CreateUserRequest", "email", email.clone()),
        ("InitialManager", "email", email),
        (
            "SecurityPolicyBody",
            "password_min_length",
            range(b::PASSWORD_MIN_LENGTH),
        ),
        (
            "SecurityPolicyBody",
            "password_max_length",
            range(b::PASSWORD_MAX_LENGTH),
        ),
        (
            "SecurityPolicyBody",
            "password_history",
            range(b::PASSWORD_HISTORY),
        ),
        (
            "SecurityPolicyBody",
            "lockout_threshold",
            range(b::LOCKOUT_THRESHOLD),
        ),
        (
            "SecurityPolicyBody",
            "lockout_minutes",
            range(b::LOCKOUT_MINUTES),
        ),
        (
            "SecurityPolicyBody",
            "step_up_max_age_seconds",
            range(b::STEP_UP_SECONDS),
        ),
        (
            "SecurityPolicyBody",
            "session_idle_timeout_seconds",
            range(b::SESSION_IDLE_SECONDS),
        ),
        (
            "SecurityPolicyBody",
            "session_absolute_lifetime_seconds",
            range(b::SESSION_ABSOLUTE_SECONDS),
        ),
        (
            "SecurityPolicyBody",
            "allowed_ips",
            json!({"maxItems": b::MAX_ALLOWED_IPS}),
        ),
        (
            "SecurityPolicyBody",
            "cors_allowed_origins",
            json!({"maxItems": b::MAX_CORS_ORIGINS}),
        ),
    ];
    // A movement's free text (`TransferDetails::validate`): 1 to N characters, none a control
    // character (`char::is_control`: U+0000-U+001F, U+007F-U+009F).
    let text = |max: usize| json!({"minLength": 1, "maxLength": max, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"});
    let string = |max: usize| {
        let mut s = text(max);
        s["type"] = "string".into();
        s
    };
    for schema in ["CreateTransferRequest", "CashRequest"] {
        v.push((schema, "description", text(MAX_DESCRIPTION_LEN)));
        v.push((
            schema,
            "metadata",
            json!({
                "maxProperties": MAX_METADATA_KEYS,
                "propertyNames": text(MAX_METADATA_KEY_LEN),
                "additionalProperties": string(MAX_METADATA_VALUE_LEN),
            }),
        ));
    }
    for field in ["name", "account", "institution"] {
        v.push(("CounterpartyBody", field, text(MAX_COUNTERPARTY_FIELD_LEN)));
    }
    let scopes: Vec<&str> = crate::domain::authz::Permission::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    let roles: Vec<&str> = crate::domain::authz::Role::ALL
        .iter()
        .filter(|r| !r.is_platform())
        .map(|r| r.as_str())
        .collect();
    for schema in ["CreateUserRequest", "SetRolesRequest"] {
        v.push((
            schema,
            "roles",
            // At least one role (`authz::parse_tenant_roles`); repeats are folded into one.
            json!({"minItems": 1, "items": {"type": "string", "enum": roles}}),
        ));
    }
    v.push((
        "SecurityPolicyBody",
        "step_up_transfer_threshold",
        json!({
            "propertyNames": {"enum": crate::domain::currency::codes().collect::<Vec<_>>()},
            "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0},
        }),
    ));
    v.push((
        "CreateApiTokenRequest",
        "scopes",
        json!({"minItems": 1, "items": {"type": "string", "enum": scopes}}),
    ));
    // Staff reasons are codes from fixed lists; notes are bounded free text (tipping off).
    {
        use crate::domain::reasons::{
            CloseReason, FreezeReason, KycRejection, MAX_NOTE_CHARS, ReasonCode, UnfreezeReason,
        };
        v.push((
            "FreezeRequest",
            "reason",
            json!({"enum": FreezeReason::codes()}),
        ));
        v.push((
            "UnfreezeRequest",
            "reason",
            json!({"enum": UnfreezeReason::codes()}),
        ));
        v.push((
            "CloseRequest",
            "reason",
            json!({"enum": CloseReason::codes()}),
        ));
        v.push((
            "RejectRequest",
            "reason",
            json!({"enum": KycRejection::codes()}),
        ));
        // Not blank; no control characters but tab, line feed and carriage return.
        let note = json!({
            "minLength": 1,
            "maxLength": MAX_NOTE_CHARS,
            "pattern": "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$",
        });
        for schema in [
            "FreezeRequest",
            "UnfreezeRequest",
            "CloseRequest",
            "RejectRequest",
            "ApproveRequest",
            "RestrictionRequest",
        ] {
            v.push((schema, "note", note.clone()));
        }
    }
    v
}

fn apply_field_bounds(doc: &mut serde_json::Value, currencies: &[&str]) {
    for (schema, field, bounds) in field_bounds() {
        let ptr = format!("/components/schemas/{schema}/properties/{field}");
        if let (Some(prop), Some(bounds)) = (
            doc.pointer_mut(&ptr).and_then(|p| p.as_object_mut()),
            bounds.as_object(),
        ) {
            for (k, v) in bounds {
                prop.insert(k.clone(), v.clone());
            }
        } else {
            tracing::warn!(
                schema,
                field,
                "OpenAPI bound names a field the document lacks"
            );
        }
    }
    // Every `currency` field of a request or response is a supported code.
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        for schema in schemas.values_mut() {
            if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
                for (name, prop) in props.iter_mut() {
                    if name == "currency"
                        && prop["type"] == "string"
                        && let Some(o) = prop.as_object_mut()
                    {
                        o.insert("enum".into(), serde_json::json!(currencies));
                    }
                }
            }
        }
    }
}

/// The document served at `/v1/openapi.json`: the generated one with the shared contract
/// applied. (Edited as JSON: utoipa's typed model does not read its own output back.)
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    apply_contract(&mut doc);
    describe_responses(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stated_bound_names_a_field_of_the_document() {
        let doc = document();
        for (schema, field, bounds) in field_bounds() {
            let prop = doc
                .pointer(&format!("/components/schemas/{schema}/properties/{field}"))
                .unwrap_or_else(|| unreachable!("{schema}.{field} is not in the document"));
            for (k, v) in bounds.as_object().into_iter().flatten() {
                assert_eq!(prop.get(k), Some(v), "{schema}.{field}.{k}");
            }
        }
        // The shared answers are there, e.g. on a JSON-body route behind authorisation.
        let op = &doc["paths"]["/v1/transfers"]["post"]["responses"];
        for s in ["400", "401", "403", "413", "415", "429"] {
            assert!(op.get(s).is_some(), "POST /v1/transfers lacks {s}");
        }
        let limit = doc["paths"]["/v1/transfers"]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
            .map(|p| p["schema"].clone())
            .unwrap_or_default();
        assert_eq!(
            (limit["minimum"].as_i64(), limit["maximum"].as_i64()),
            (Some(1), Some(100))
        );
    }

    #[test]
    fn a_user_needs_a_role_in_the_document_as_in_the_code() {
        let doc = document();
        for schema in ["CreateUserRequest", "SetRolesRequest"] {
            let roles = &doc["components"]["schemas"][schema]["properties"]["roles"];
            assert_eq!(roles["minItems"], 1, "{schema}");
        }
        assert!(crate::domain::authz::parse_tenant_roles(&[]).is_err());
        assert!(crate::domain::authz::parse_tenant_roles(&["CASHIER".into()]).is_ok());
    }
}
