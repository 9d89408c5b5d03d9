//! The OpenAPI document: it covers every route, is the document the code generates, matches its
//! checked-in snapshot (docs/openapi.json), names each operation uniquely, describes every
//! response, states the bounds the checks enforce (from the same constants), and the docs page
//! is served locally.

use axum::http::{Method, StatusCode};
use kasho::http::routes::{Access, RouteDef};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Resp, TestApp, customer_account};

/// The document as the code generates it (what `/v1/openapi.json` serves, see below).
fn document() -> Value {
    kasho::http::openapi::document()
}

/// Every operation of the document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            ops.push((method.to_uppercase(), path.clone(), op));
        }
    }
    ops
}

async fn every_route_is_in_the_openapi_document(app: &TestApp) {
    let r = app
        .request(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        r.body["openapi"]
    );
    // What is served is what the code generates (so the checks below and the snapshot hold for
    // the served document too).
    assert!(r.body == document(), "/v1/openapi.json is not `document()`");
    // `GET /metrics` is an operator endpoint behind its own token, not part of the API contract.
    let table = || -> Vec<RouteDef> {
        kasho::http::routes::table()
            .into_iter()
            .filter(|d| d.access != Access::MetricsToken)
            .collect()
    };
    let paths = &r.body["paths"];
    let mut missing = Vec::new();
    for def in table() {
        let op = &paths[def.path][def.method.as_str().to_lowercase()];
        if op.is_null() {
            missing.push(format!("{} {}", def.method, def.path));
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:?}"
    );
    // And nothing is documented that the router does not serve.
    let documented: usize = paths
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(documented, table().len());
}

async fn the_docs_page_is_served_without_a_cdn(app: &TestApp) {
    let r = app.request(Method::GET, "/docs/", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let html = r.body.as_str().unwrap_or("");
    assert!(html.contains("swagger"), "{html}");
    assert!(!html.contains("https://"), "no external assets");
}

/// `verb` + `Resource…` in camelCase: a lowercase verb, then one or more capitalised words
/// (`listAccounts`, `createBatchTransfers`, `getKycLimits`; acronyms as words: `Kyc`, `Mfa`).
fn is_resource_qualified(id: &str) -> bool {
    let verb_len = id
        .find(|c: char| !c.is_ascii_lowercase())
        .unwrap_or(id.len());
    let rest = &id[verb_len..];
    verb_len > 0
        && !rest.is_empty()
        && rest.starts_with(|c: char| c.is_ascii_uppercase())
        && rest.chars().all(|c| c.is_ascii_alphanumeric())
        // No two capitals in a row: every word is capitalised, not shouted.
        && !rest
            .as_bytes()
            .windows(2)
            .any(|w| w[0].is_ascii_uppercase() && w[1].is_ascii_uppercase())
}

#[test]
fn every_operation_has_a_unique_resource_qualified_id() {
    assert!(is_resource_qualified("createBatchTransfers"));
    for bad in [
        "list",
        "create_transfer",
        "ListAccounts",
        "getKYCLimits",
        "get",
    ] {
        assert!(!is_resource_qualified(bad), "{bad}");
    }
    let doc = document();
    let mut seen = std::collections::BTreeMap::new();
    let mut problems = Vec::new();
    for (method, path, op) in operations(&doc) {
        let Some(id) = op["operationId"].as_str() else {
            problems.push(format!("{method} {path}: no operationId"));
            continue;
        };
        if !is_resource_qualified(id) {
            problems.push(format!(
                "{method} {path}: `{id}` is not verb + Resource in camelCase (docs/API.md, Operation ids)"
            ));
        }
        if let Some(other) = seen.insert(id.to_owned(), format!("{method} {path}")) {
            problems.push(format!("`{id}` names both {other} and {method} {path}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_response_has_a_description() {
    let doc = document();
    let mut missing = Vec::new();
    let mut count = 0;
    for (method, path, op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().expect("responses") {
            count += 1;
            let described = response["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty());
            if !described && response.get("$ref").is_none() {
                missing.push(format!("{method} {path} {status}"));
            }
        }
    }
    assert!(count > 0);
    assert!(
        missing.is_empty(),
        "responses without a description: {missing:#?}"
    );
}

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const BLESS: &str = "KASHO_BLESS_OPENAPI";

/// JSON pointers where `a` and `b` differ (at most `max`).
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>, max: usize) {
    if out.len() >= max || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let key = k.replace('~', "~0").replace('/', "~1");
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(l, r, &format!("{at}/{key}"), out, max);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(l, r, &format!("{at}/{i}"), out, max);
            }
        }
        _ => out.push(if at.is_empty() {
            "/".to_owned()
        } else {
            at.to_owned()
        }),
    }
}

/// The contract does not change by accident: the generated document must equal the checked-in
/// docs/openapi.json. A deliberate change is blessed with `KASHO_BLESS_OPENAPI=1 cargo test
/// --test integration openapi::`, and the snapshot's diff is reviewed with the code.
#[test]
fn the_document_matches_its_snapshot() {
    let doc = document();
    let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var(BLESS).is_ok_and(|v| v == "1") {
        std::fs::write(SNAPSHOT, &pretty).unwrap();
        return;
    }
    let refresh = format!(
        "if the change is deliberate, refresh the snapshot with `{BLESS}=1 cargo test --test \
         integration openapi::` and commit docs/openapi.json with it (a changed operation id, \
         path, schema or bound is a change of the public contract: say so in docs/API.md)"
    );
    let stored = std::fs::read_to_string(SNAPSHOT)
        .unwrap_or_else(|e| panic!("cannot read {SNAPSHOT}: {e}; {refresh}"));
    let stored: Value = serde_json::from_str(&stored)
        .unwrap_or_else(|e| panic!("docs/openapi.json is not JSON: {e}; {refresh}"));
    let mut diff = Vec::new();
    differences(&stored, &doc, "", &mut diff, 30);
    assert!(
        diff.is_empty(),
        "the OpenAPI document differs from docs/openapi.json at {diff:#?}\n{refresh}"
    );
}

/// The schema's bounds are the constants the checks use (so the document cannot promise what
/// the server refuses, or the other way round).
#[test]
fn the_documents_bounds_are_the_constants_the_checks_use() {
    use kasho::domain::kyc::{MAX_DOCUMENTS, MAX_TIER};
    use kasho::domain::ledger::{
        HOLD_MAX_SECONDS, HOLD_MIN_SECONDS, MAX_AMOUNT, MAX_COUNTERPARTY_FIELD_LEN,
        MAX_CREDIT_LEGS, MAX_DESCRIPTION_LEN, MAX_METADATA_KEY_LEN, MAX_METADATA_KEYS,
        MAX_METADATA_VALUE_LEN,
    };
    use kasho::service::ledger::MAX_BATCH_TRANSFERS;
    let doc = document();
    let field = |schema: &str, field: &str| -> Value {
        let p = format!("/components/schemas/{schema}/properties/{field}");
        doc.pointer(&p)
            .unwrap_or_else(|| panic!("{p} is not in the document"))
            .clone()
    };
    let expect = |schema: &str, name: &str, bounds: Value| {
        let prop = field(schema, name);
        for (k, v) in bounds.as_object().unwrap() {
            assert_eq!(&prop[k], v, "{schema}.{name}.{k}");
        }
    };
    expect(
        "CreateHoldRequest",
        "expires_in_seconds",
        json!({"minimum": HOLD_MIN_SECONDS, "maximum": HOLD_MAX_SECONDS}),
    );
    expect(
        "BatchRequest",
        "transfers",
        json!({"minItems": 1, "maxItems": MAX_BATCH_TRANSFERS}),
    );
    expect(
        "CreateTransferRequest",
        "credits",
        json!({"minItems": 1, "maxItems": MAX_CREDIT_LEGS}),
    );
    expect(
        "ReverseRequest",
        "legs",
        json!({"minItems": 1, "maxItems": MAX_CREDIT_LEGS}),
    );
    for (schema, name) in [
        ("CreateTransferRequest", "amount"),
        ("CreditLeg", "amount"),
        ("CashRequest", "amount"),
        ("CreateHoldRequest", "amount"),
        ("CaptureRequest", "amount"),
        ("ReverseRequest", "amount"),
    ] {
        expect(schema, name, json!({"minimum": 1, "maximum": MAX_AMOUNT}));
    }
    expect(
        "OverdraftRequest",
        "overdraft_limit",
        json!({"minimum": 0, "maximum": MAX_AMOUNT}),
    );
    for schema in ["CreateTransferRequest", "CashRequest"] {
        expect(
            schema,
            "description",
            json!({"minLength": 1, "maxLength": MAX_DESCRIPTION_LEN}),
        );
        let metadata = field(schema, "metadata");
        assert_eq!(
            metadata["maxProperties"],
            json!(MAX_METADATA_KEYS),
            "{schema}"
        );
        assert_eq!(
            metadata["propertyNames"]["maxLength"],
            json!(MAX_METADATA_KEY_LEN),
            "{schema}"
        );
        assert_eq!(
            metadata["additionalProperties"]["maxLength"],
            json!(MAX_METADATA_VALUE_LEN),
            "{schema}"
        );
        assert_eq!(
            metadata["additionalProperties"]["type"], "string",
            "{schema}"
        );
    }
    for name in ["name", "account", "institution"] {
        expect(
            "CounterpartyBody",
            name,
            json!({"minLength": 1, "maxLength": MAX_COUNTERPARTY_FIELD_LEN}),
        );
    }
    expect(
        "SubmitRequest",
        "documents",
        json!({"minItems": 1, "maxItems": MAX_DOCUMENTS}),
    );
    expect(
        "PutLimitsRequest",
        "tiers",
        json!({"minItems": 1, "maxItems": MAX_TIER + 1}),
    );
}

/// The number at `pointer` in the document.
fn bound(doc: &Value, pointer: &str) -> i64 {
    doc.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no number at {pointer}"))
}

/// The document's bounds are exactly where the server starts refusing: a value at the bound
/// passes the check, one past it is refused with 400 on that field.
async fn the_documented_bounds_are_where_the_server_refuses(app: &TestApp) {
    let doc = document();
    let s = "/components/schemas";
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "bounds").await;
    let m = t.manager_token.as_str();
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    let deposit = |fields: Value| {
        let mut body = json!({"account_id": a, "amount": 1_000, "currency": "USD"});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.post("/v1/deposits", Some(m), body)
    };
    let refused = |r: &Resp, param: &str| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
        assert!(
            r.body["error"]["param"]
                .as_str()
                .is_some_and(|p| p.starts_with(param)),
            "{param}: {r:?}"
        );
    };

    // Free text and metadata of a movement.
    let desc = bound(
        &doc,
        &format!("{s}/CashRequest/properties/description/maxLength"),
    ) as usize;
    let r = deposit(json!({"description": "é".repeat(desc)})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    refused(
        &deposit(json!({"description": "é".repeat(desc + 1)})).await,
        "description",
    );
    let meta = format!("{s}/CashRequest/properties/metadata");
    let keys = bound(&doc, &format!("{meta}/maxProperties")) as usize;
    let key_len = bound(&doc, &format!("{meta}/propertyNames/maxLength")) as usize;
    let value_len = bound(&doc, &format!("{meta}/additionalProperties/maxLength")) as usize;
    let metadata = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("{i:0>key_len$}"), json!("v".repeat(value_len))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let r = deposit(json!({"metadata": metadata(keys)})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    refused(
        &deposit(json!({"metadata": metadata(keys + 1)})).await,
        "metadata",
    );
    refused(
        &deposit(json!({"metadata": {"k".repeat(key_len + 1): "v"}})).await,
        "metadata",
    );
    refused(
        &deposit(json!({"metadata": {"k": "v".repeat(value_len + 1)}})).await,
        "metadata",
    );
    let cp = bound(
        &doc,
        &format!("{s}/CounterpartyBody/properties/name/maxLength"),
    ) as usize;
    let r = deposit(json!({"counterparty": {"name": "n".repeat(cp)}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    refused(
        &deposit(json!({"counterparty": {"name": "n".repeat(cp + 1)}})).await,
        "counterparty",
    );
    let max_amount = bound(&doc, &format!("{s}/CashRequest/properties/amount/maximum"));
    refused(&deposit(json!({"amount": max_amount + 1})).await, "amount");

    // Credit legs: one more than the document allows is refused before anything moves.
    let legs = bound(
        &doc,
        &format!("{s}/CreateTransferRequest/properties/credits/maxItems"),
    );
    let credits: Vec<Value> = (0..=legs)
        .map(|_| json!({"account_id": b, "amount": 1}))
        .collect();
    let r = app
        .post(
            "/v1/transfers",
            Some(m),
            json!({"amount": legs + 1, "currency": "USD", "debit_account_id": a, "credits": credits}),
        )
        .await;
    refused(&r, "credits");

    // A hold's lifetime: both ends pass, one second beyond either is refused.
    let life = format!("{s}/CreateHoldRequest/properties/expires_in_seconds");
    let (min, max) = (
        bound(&doc, &format!("{life}/minimum")),
        bound(&doc, &format!("{life}/maximum")),
    );
    for (seconds, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
        let r = app
            .post(
                "/v1/holds",
                Some(m),
                json!({"account_id": a, "amount": 1, "currency": "USD", "expires_in_seconds": seconds}),
            )
            .await;
        if ok {
            assert_eq!(r.status, StatusCode::CREATED, "{seconds} s: {r:?}");
        } else {
            refused(&r, "expires_in_seconds");
        }
    }

    // A batch one transfer larger than the document allows.
    let size = bound(
        &doc,
        &format!("{s}/BatchRequest/properties/transfers/maxItems"),
    );
    let one =
        json!({"amount": 1, "currency": "USD", "debit_account_id": a, "credit_account_id": b});
    let r = app
        .post(
            "/v1/transfers/batch",
            Some(m),
            json!({"transfers": vec![one; size as usize + 1]}),
        )
        .await;
    refused(&r, "transfers");
}

backend_tests!(
    every_route_is_in_the_openapi_document,
    the_docs_page_is_served_without_a_cdn,
    the_documented_bounds_are_where_the_server_refuses
);
