//! Customers' personal data: validation, masking, revealed reads and their audit records,
//! blind-index search, rectification, and what storage really holds.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Resp, TenantFixture, TestApp};

/// A full profile; `n` varies every unique value.
fn profile(n: u32) -> Value {
    json!({
        "external_ref": format!("crm-{n}"),
        "first_name": "Jane",
        "last_name": "Okafor",
        "email": format!("Jane.Okafor{n}@Example.com"),
        "phone": format!("+234 803 123 {:04}", 4500 + n),
        "date_of_birth": "1990-02-28",
        "address": {
            "line1": "12 Marina Road", "line2": "Flat 3", "city": "Lagos",
            "region": "Lagos State", "postal_code": "101241", "country": "ng"
        },
        "nationality": "NG",
        "national_ids": [
            { "type": "BVN", "number": format!("221234{:05}", n) },
            { "type": "SSN", "number": format!("123-45-{:04}", 6700 + n) }
        ]
    })
}

async fn create(app: &TestApp, t: &TenantFixture, body: Value) -> Resp {
    app.post("/v1/customers", Some(&t.manager_token), body)
        .await
}

async fn create_ok(app: &TestApp, t: &TenantFixture, body: Value) -> String {
    let r = create(app, t, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.body["id"].as_str().unwrap().to_owned()
}

async fn customer_count(app: &TestApp, t: &TenantFixture) -> usize {
    let r = app.get("/v1/customers?limit=100", &t.manager_token).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.body["data"].as_array().unwrap().len()
}

fn ids(r: &Resp) -> Vec<String> {
    r.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {r:?}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_masked(c: &Value, n: u32) {
    assert_eq!(c["masked"], true, "{c}");
    assert_eq!(c["first_name"], "J***");
    assert_eq!(c["last_name"], "O***");
    assert_eq!(c["email"], "j***@example.com");
    assert_eq!(c["phone"], format!("***{:04}", 4500 + n));
    assert_eq!(c["date_of_birth"], "****-**-**");
    assert_eq!(
        c["address"],
        json!({ "line1": "***", "line2": "***", "city": "Lagos", "region": "***",
                "postal_code": "***", "country": "NG" })
    );
    assert_eq!(c["nationality"], "**");
    assert_eq!(
        c["national_ids"],
        json!([
            { "type": "BVN", "number": format!("***{:04}", n % 10_000) },
            { "type": "SSN", "number": format!("***{:04}", 6700 + n) }
        ])
    );
    let text = c.to_string();
    for secret in [
        "Jane",
        "Okafor",
        "jane.okafor",
        "1990",
        "Marina",
        "101241",
        "22123",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

fn assert_revealed(c: &Value, n: u32) {
    assert_eq!(c["masked"], false, "{c}");
    assert_eq!(c["first_name"], "Jane");
    assert_eq!(c["last_name"], "Okafor");
    assert_eq!(c["email"], format!("jane.okafor{n}@example.com"));
    assert_eq!(c["phone"], format!("+234803123{:04}", 4500 + n));
    assert_eq!(c["date_of_birth"], "1990-02-28");
    assert_eq!(c["address"]["line1"], "12 Marina Road");
    assert_eq!(c["address"]["postal_code"], "101241");
    assert_eq!(c["address"]["country"], "NG");
    assert_eq!(c["nationality"], "NG");
    assert_eq!(
        c["national_ids"],
        json!([
            { "type": "BVN", "number": format!("221234{:05}", n) },
            { "type": "SSN", "number": format!("12345{:04}", 6700 + n) }
        ])
    );
}

/// The `customer.pii.read` records of a tenant chain.
async fn pii_reads(app: &TestApp, t: &TenantFixture) -> Vec<kasho::domain::audit::AuditRecord> {
    app.audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.action == "customer.pii.read")
        .collect()
}

async fn personal_data_is_validated_field_by_field(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("first_name", json!("R2D2"), "R2D2"),
        ("last_name", json!("   "), ""),
        ("email", json!("jane@@example"), "jane@@example"),
        ("phone", json!("08031234567"), "08031234567"),
        ("phone", json!("+1234567"), "+1234567"),
        ("date_of_birth", json!("2999-01-01"), "2999-01-01"),
        ("date_of_birth", json!("1990-02-30"), "1990-02-30"),
        ("date_of_birth", json!("1700-01-01"), "1700-01-01"),
        ("nationality", json!("Nigeria"), "Nigeria"),
    ];
    for (field, value, shown) in cases {
        let mut body = profile(1);
        body[field] = value;
        let r = create(app, &t, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {r:?}");
        assert_eq!(r.code(), "parameter_invalid", "{field}: {r:?}");
        assert_eq!(r.body["error"]["param"], field, "{r:?}");
        if !shown.is_empty() {
            assert!(
                !r.body["error"]["message"].as_str().unwrap().contains(shown),
                "the message repeats the value: {r:?}"
            );
        }
    }
    let nested: Vec<(&str, Value, &str)> = vec![
        (
            "address.country",
            json!({"line1": "1 A St", "city": "Lagos", "country": "XX"}),
            "",
        ),
        (
            "address.line1",
            json!({"line1": "", "city": "Lagos", "country": "NG"}),
            "",
        ),
        (
            "address.postal_code",
            json!({"line1": "1 A St", "city": "Lagos", "postal_code": "#!", "country": "NG"}),
            "",
        ),
        (
            "address.city",
            json!({"line1": "1 A St", "country": "NG"}),
            "missing",
        ),
        (
            "national_ids[0].number",
            json!([{"type": "BVN", "number": "1234"}]),
            "",
        ),
        (
            "national_ids[0].number",
            json!([{"type": "NIN", "number": "1234567890a"}]),
            "",
        ),
        (
            "national_ids[1].number",
            json!([{"type": "PASSPORT", "number": "A1234567"}, {"type": "SSN", "number": "666-12-3456"}]),
            "",
        ),
        (
            "national_ids[0].number",
            json!([{"type": "ZA_ID", "number": "8001015009088"}]),
            "",
        ),
        (
            "national_ids[0].number",
            json!([{"type": "PASSPORT", "number": "A12"}]),
            "",
        ),
        (
            "national_ids[0].type",
            json!([{"type": "LIBRARY_CARD", "number": "12345678"}]),
            "",
        ),
        (
            "national_ids[1].number",
            json!([{"type": "BVN", "number": "22123456789"}, {"type": "bvn", "number": "22123456789"}]),
            "",
        ),
    ];
    for (param, value, kind) in nested {
        let mut body = profile(1);
        let field = param.split(['.', '[']).next().unwrap();
        body[field] = value;
        let r = create(app, &t, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{param}: {r:?}");
        assert_eq!(r.body["error"]["param"], param, "{r:?}");
        if kind == "missing" {
            assert_eq!(r.code(), "parameter_missing", "{r:?}");
        }
    }
    // A wrong JSON type is refused without echoing the value.
    let mut body = profile(1);
    body["phone"] = json!(2348031234567_i64);
    let r = create(app, &t, body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.body["error"]["param"], "phone");
    assert!(!r.body.to_string().contains("2348031234567"), "{r:?}");
    // Personal data needs a name.
    let r = create(app, &t, json!({ "email": "someone@example.com" })).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "parameter_missing");
    assert_eq!(r.body["error"]["param"], "first_name");
    let r = create(app, &t, json!({ "first_name": "Jane" })).await;
    assert_eq!(r.body["error"]["param"], "last_name", "{r:?}");
    // Nothing was created by any of these.
    assert_eq!(customer_count(app, &t).await, 0);
    assert!(
        app.raw_strings("SELECT customer_id FROM customer_lookup")
            .await
            .is_empty()
    );
    // A record without personal data is still fine, and so is a valid profile.
    create_ok(app, &t, json!({ "external_ref": "crm-0" })).await;
    create_ok(app, &t, profile(1)).await;
    assert_eq!(customer_count(app, &t).await, 2);
}

async fn personal_data_is_masked_unless_revealed_and_every_revealed_read_is_audited(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let created = create(app, &t, profile(1)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_masked(&created.body, 1);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let second = create_ok(app, &t, profile(2)).await;
    let bare = create_ok(app, &t, json!({ "external_ref": "no-pii" })).await;
    let path = format!("/v1/customers/{id}");
    let unmasked = format!("{path}?unmasked=true");

    for role in ["CASHIER", "AGENT", "AUDITOR"] {
        let (_, token) = app.user_token(&t, &[role]).await;
        let r = app.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{role}: {r:?}");
        assert_masked(&r.body, 1);
        assert_eq!(r.headers["cache-control"], "no-store");
        let list = app.get("/v1/customers", &token).await;
        for c in list.body["data"].as_array().unwrap() {
            if c["id"] == id.as_str() {
                assert_masked(c, 1);
            }
        }
        // Asking for the full values without customers:read_pii is refused, and recorded.
        let r = app.get(&unmasked, &token).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}: {r:?}");
        assert_eq!(r.code(), "forbidden");
        assert!(!r.body.to_string().contains("Jane"));
        let r = app.get("/v1/customers?unmasked=true", &token).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}: {r:?}");
    }
    let denied = pii_reads(app, &t).await;
    assert_eq!(denied.len(), 6, "{denied:?}");
    assert!(
        denied
            .iter()
            .all(|e| e.outcome == "denied" && e.reason.as_deref() == Some("customers:read_pii"))
    );

    // COMPLIANCE_OFFICER and MANAGER see everything when they ask, and each read is recorded.
    let (officer_id, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let masked = app.get(&path, &officer).await;
    assert_masked(&masked.body, 1);
    assert_eq!(
        pii_reads(app, &t).await.len(),
        6,
        "a masked read is not audited"
    );
    let r = app.get(&unmasked, &officer).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_revealed(&r.body, 1);
    let reads = pii_reads(app, &t).await;
    let last = reads.last().unwrap();
    assert_eq!(reads.len(), 7);
    assert_eq!(last.outcome, "success");
    assert_eq!(last.actor_id.as_deref(), Some(officer_id.as_str()));
    assert_eq!(last.target_type.as_deref(), Some("customer"));
    assert_eq!(last.target_id.as_deref(), Some(id.as_str()));
    assert_eq!(last.reason.as_deref(), Some("customers:read_pii"));
    assert!(last.request_id.is_some());

    // An unmasked list: one record per customer whose data it reveals.
    let list = app
        .get("/v1/customers?unmasked=true&limit=100", &t.manager_token)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    let data = list.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for c in data {
        if c["id"] == id.as_str() {
            assert_revealed(c, 1);
        } else if c["id"] == second.as_str() {
            assert_revealed(c, 2);
        } else {
            assert_eq!(c["id"], bare.as_str());
            assert_eq!(c["first_name"], Value::Null);
            assert_eq!(c["masked"], false);
        }
    }
    let reads = pii_reads(app, &t).await;
    assert_eq!(reads.len(), 9, "{reads:?}");
    let mut targets: Vec<&str> = reads[7..]
        .iter()
        .map(|e| e.target_id.as_deref().unwrap())
        .collect();
    targets.sort_unstable();
    let mut expected = vec![id.as_str(), second.as_str()];
    expected.sort_unstable();
    assert_eq!(targets, expected);
    assert!(
        reads[7..]
            .iter()
            .all(|e| e.actor_id.as_deref() == Some(t.manager_id.as_str()))
    );
    // The audit log itself holds no personal data.
    let log = app
        .get("/v1/audit-events?limit=100", &t.manager_token)
        .await;
    let text = log.body.to_string();
    for secret in ["Jane", "okafor", "8031234", "Marina", "22123"] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
}

async fn a_customer_sees_itself_unmasked_and_nobody_else(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (uid, token) = app.user_token(&t, &["CUSTOMER"]).await;
    let mut body = profile(1);
    body["user_id"] = json!(uid);
    let mine = create_ok(app, &t, body).await;
    let other = create_ok(app, &t, profile(2)).await;

    let r = app.get(&format!("/v1/customers/{mine}"), &token).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_revealed(&r.body, 1);
    let reads = pii_reads(app, &t).await;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].reason.as_deref(), Some("own record"));
    assert_eq!(reads[0].actor_id.as_deref(), Some(uid.as_str()));
    // Asking explicitly changes nothing for its own record.
    let r = app
        .get(&format!("/v1/customers/{mine}?unmasked=true"), &token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_revealed(&r.body, 1);

    // Another customer is as missing as a customer that does not exist.
    for path in [
        format!("/v1/customers/{other}"),
        format!("/v1/customers/{other}?unmasked=true"),
    ] {
        let r = app.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
        assert!(!r.body.to_string().contains("Jane"));
    }
    let list = app.get("/v1/customers?unmasked=true", &token).await;
    assert_eq!(ids(&list), vec![mine.clone()]);
    assert_revealed(&list.body["data"][0], 1);
    // Searching for someone else finds nothing; searching for itself finds itself.
    let r = app
        .get("/v1/customers?email=jane.okafor2@example.com", &token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(ids(&r).is_empty());
    let r = app
        .get(
            "/v1/customers?national_id_type=BVN&national_id=22123400002",
            &token,
        )
        .await;
    assert!(ids(&r).is_empty());
    let r = app
        .get("/v1/customers?email=jane.okafor1@example.com", &token)
        .await;
    assert_eq!(ids(&r), vec![mine.clone()]);
    // It cannot rectify (staff do, see docs/SECURITY.md), nor create.
    let r = app
        .patch(
            &format!("/v1/customers/{mine}"),
            &token,
            json!({ "email": "new@example.com" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
}

async fn search_finds_exact_matches_through_blind_indexes_and_never_across_tenants(app: &TestApp) {
    let admin = app.platform_admin().await;
    let a = app.tenant(&admin, "tenant-a").await;
    let b = app.tenant(&admin, "tenant-b").await;
    let a1 = create_ok(app, &a, profile(1)).await;
    let a2 = create_ok(app, &a, profile(2)).await;
    // The same person, onboarded by another tenant.
    let b1 = create_ok(app, &b, profile(1)).await;
    let (_, cashier) = app.user_token(&a, &["CASHIER"]).await;

    let find = |token: String, q: &'static str| async move {
        let r = app.get(&format!("/v1/customers?{q}"), &token).await;
        assert_eq!(r.status, StatusCode::OK, "{q}: {r:?}");
        r
    };
    // Email, whatever its case and surrounding spaces.
    let r = find(cashier.clone(), "email=JANE.OKAFOR1%40EXAMPLE.COM").await;
    assert_eq!(ids(&r), vec![a1.clone()]);
    assert_masked(&r.body["data"][0], 1);
    let r = find(cashier.clone(), "email=%20jane.okafor2@example.com%20").await;
    assert_eq!(ids(&r), vec![a2.clone()]);
    // Phone, with or without separators (searching by phone or national id needs
    // `customers:read_pii`, which a CASHIER lacks: see tests/integration/commit_checks.rs).
    let r = find(a.manager_token.clone(), "phone=%2B2348031234501").await;
    assert_eq!(ids(&r), vec![a1.clone()]);
    let r = find(a.manager_token.clone(), "phone=%2B234%20803%20123%204502").await;
    assert_eq!(ids(&r), vec![a2.clone()]);
    // National ids, normalised (an SSN with or without dashes; the type in any case).
    let r = find(
        a.manager_token.clone(),
        "national_id_type=ssn&national_id=123456701",
    )
    .await;
    assert_eq!(ids(&r), vec![a1.clone()]);
    let r = find(
        a.manager_token.clone(),
        "national_id_type=SSN&national_id=123-45-6702",
    )
    .await;
    assert_eq!(ids(&r), vec![a2.clone()]);
    let r = find(
        a.manager_token.clone(),
        "national_id_type=BVN&national_id=22123400001",
    )
    .await;
    assert_eq!(ids(&r), vec![a1.clone()]);
    // A number of one type does not find the same digits filed under another.
    let r = find(
        a.manager_token.clone(),
        "national_id_type=NIN&national_id=22123400001",
    )
    .await;
    assert!(ids(&r).is_empty());
    // Exact match only.
    let r = find(cashier.clone(), "email=jane.okafor@example.com").await;
    assert!(ids(&r).is_empty());
    // Each tenant finds only its own record of the same person.
    let r = find(b.manager_token.clone(), "email=jane.okafor1@example.com").await;
    assert_eq!(ids(&r), vec![b1.clone()]);
    let r = find(b.manager_token.clone(), "email=jane.okafor2@example.com").await;
    assert!(ids(&r).is_empty());
    let r = find(b.manager_token.clone(), "phone=%2B2348031234501").await;
    assert_eq!(ids(&r), vec![b1.clone()]);
    // The blind indexes differ per tenant for the same value.
    let digests = app
        .raw_strings(&format!(
            "SELECT digest FROM customer_lookup WHERE field = 'email' AND customer_id IN ('{a1}', '{b1}')"
        ))
        .await;
    assert_eq!(digests.len(), 2);
    assert_ne!(digests[0], digests[1]);

    // Bad searches name their parameter and never echo the value.
    let bad = [
        ("email=not-an-email", "email", "parameter_invalid"),
        ("phone=08031234567", "phone", "parameter_invalid"),
        ("national_id_type=BVN", "national_id", "parameter_missing"),
        (
            "national_id=22123400001",
            "national_id_type",
            "parameter_missing",
        ),
        (
            "national_id_type=DL&national_id=1",
            "national_id_type",
            "parameter_invalid",
        ),
        (
            "national_id_type=BVN&national_id=1",
            "national_id",
            "parameter_invalid",
        ),
        (
            "email=a@example.com&phone=%2B2348031234501",
            "phone",
            "parameter_invalid",
        ),
        ("nickname=jane", "nickname", "parameter_unknown"),
    ];
    for (q, param, code) in bad {
        let r = app.get(&format!("/v1/customers?{q}"), &cashier).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {r:?}");
        assert_eq!(r.body["error"]["param"], param, "{q}: {r:?}");
        assert_eq!(r.code(), code, "{q}: {r:?}");
        assert!(!r.body.to_string().contains("08031234567"));
    }
}

/// Collects what the app logs while `f` runs.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

async fn searches_and_personal_data_never_reach_the_logs(app: &TestApp) {
    use tracing::instrument::WithSubscriber;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    // The two backends' runs of this test take turns: tracing's per-callsite interest cache
    // is process-wide, and a scoped subscriber dropped by one run could hide the other's events.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let t = &t;
    let requests = |n: u32| async move {
        let id = create_ok(app, t, profile(n)).await;
        for q in [
            format!("email=jane.okafor{n}@example.com"),
            format!("phone=%2B234803123{}", 4500 + n),
            format!("national_id_type=BVN&national_id=221234{n:05}"),
            "email=broken@@example.com".to_owned(),
        ] {
            tracing::callsite::rebuild_interest_cache();
            app.get(
                &format!("/v1/customers?{q}&unmasked=true"),
                &t.manager_token,
            )
            .await;
        }
        app.get(
            &format!("/v1/customers/{id}?unmasked=true"),
            &t.manager_token,
        )
        .await;
        app.patch(
            &format!("/v1/customers/{id}"),
            &t.manager_token,
            json!({ "email": "jane.new@example.com", "phone": "+2348039999999" }),
        )
        .await;
    };
    // Under a loaded parallel run, tracing may drop some of a scoped subscriber's events (its
    // interest cache is shared by the whole process), so the scenario is tried until the log of
    // every request is captured, and every captured log is searched for the values.
    let mut best = 0;
    for n in 7..11 {
        let buffer = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(buffer.clone())
            .finish();
        requests(n).with_subscriber(subscriber).await;
        let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        for secret in [
            "okafor".to_owned(),
            "Okafor".to_owned(),
            "Jane".to_owned(),
            "broken".to_owned(),
            format!("803123{}", 4500 + n),
            format!("221234{n:05}"),
            "jane.new".to_owned(),
            "8039999999".to_owned(),
            "Marina".to_owned(),
            "1990-02-28".to_owned(),
        ] {
            assert!(!logs.contains(&secret), "{secret} reached the logs: {logs}");
        }
        best = best.max(logs.matches("\"message\":\"request\"").count());
        if best >= 7 {
            break;
        }
    }
    assert!(best >= 1, "the request log was captured");
}

async fn rectification_replaces_the_data_and_its_blind_indexes_and_is_audited(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let id = create_ok(app, &t, profile(1)).await;
    let path = format!("/v1/customers/{id}");
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;

    let r = app
        .patch(
            &path,
            &cashier,
            json!({ "email": "Jane.New@Example.org", "phone": null,
                    "address": { "line1": "4 Adeola Odeku St", "city": "Abuja", "country": "NG" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["email"], "j***@example.org");
    assert_eq!(r.body["phone"], Value::Null);
    assert_eq!(r.body["address"]["city"], "Abuja");
    assert_eq!(r.body["address"]["line2"], Value::Null);
    assert_eq!(r.body["masked"], true);
    assert!(r.body["updated_at"].is_string());
    // The change is stored, and the rest is untouched.
    let full = app
        .get(&format!("{path}?unmasked=true"), &t.manager_token)
        .await;
    assert_eq!(full.body["email"], "jane.new@example.org");
    assert_eq!(full.body["phone"], Value::Null);
    assert_eq!(full.body["address"]["line1"], "4 Adeola Odeku St");
    assert_eq!(full.body["first_name"], "Jane");
    assert_eq!(full.body["date_of_birth"], "1990-02-28");
    assert_eq!(full.body["national_ids"][0]["number"], "22123400001");
    // The blind indexes follow: the old email and the removed phone no longer find it.
    let manager = t.manager_token.as_str();
    let find = |q: &'static str| async move {
        ids(&app.get(&format!("/v1/customers?{q}"), manager).await)
    };
    assert!(find("email=jane.okafor1@example.com").await.is_empty());
    assert!(find("phone=%2B2348031234501").await.is_empty());
    assert_eq!(find("email=jane.new@example.org").await, vec![id.clone()]);
    assert_eq!(
        find("national_id_type=BVN&national_id=22123400001").await,
        vec![id.clone()]
    );
    // Audited with the names of the fields changed, never their values.
    let update = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .rfind(|e| e.action == "customer.update")
        .unwrap();
    assert_eq!(update.outcome, "success");
    assert_eq!(update.target_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        update.reason.as_deref(),
        Some("fields: email,phone,address")
    );

    // National ids are replaced as a whole; the old ones stop finding the customer.
    let r = app
        .patch(
            &path,
            &t.manager_token,
            json!({ "national_ids": [{ "type": "NIN", "number": "12345678901" }], "last_name": "Adeyemi" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["last_name"], "A***");
    assert!(
        find("national_id_type=BVN&national_id=22123400001")
            .await
            .is_empty()
    );
    assert_eq!(
        find("national_id_type=NIN&national_id=12345678901").await,
        vec![id.clone()]
    );
    assert_eq!(find("email=jane.new@example.org").await, vec![id.clone()]);

    // Invalid changes name their field and change nothing.
    let before = app
        .raw_strings(&format!("SELECT pii FROM customers WHERE id = '{id}'"))
        .await;
    for (body, param) in [
        (json!({ "phone": "12345" }), "phone"),
        (
            json!({ "email": "jane.newer@example.org", "date_of_birth": "2999-01-01" }),
            "date_of_birth",
        ),
        (json!({ "first_name": null }), "first_name"),
        (
            json!({ "address": { "line1": "x", "city": "y", "country": "ZZ" } }),
            "address.country",
        ),
        (
            json!({ "national_ids": [{ "type": "SSN", "number": "000-12-3456" }] }),
            "national_ids[0].number",
        ),
        (json!({ "nickname": "JJ" }), "nickname"),
    ] {
        let r = app.patch(&path, &t.manager_token, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
        assert_eq!(r.body["error"]["param"], param, "{r:?}");
    }
    let r = app.patch(&path, &t.manager_token, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    let after = app
        .raw_strings(&format!("SELECT pii FROM customers WHERE id = '{id}'"))
        .await;
    assert_eq!(before, after);
    assert!(find("email=jane.newer@example.org").await.is_empty());
    let failures = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.action == "customer.update" && e.outcome == "failure")
        .count();
    assert_eq!(failures, 7, "every refused rectification is recorded");

    // A record without personal data gains some (with a name), through PATCH.
    let bare = create_ok(app, &t, json!({})).await;
    let r = app
        .patch(
            &format!("/v1/customers/{bare}"),
            &t.manager_token,
            json!({ "email": "late@example.com" }),
        )
        .await;
    assert_eq!(r.body["error"]["param"], "first_name", "{r:?}");
    let r = app
        .patch(
            &format!("/v1/customers/{bare}"),
            &t.manager_token,
            json!({ "email": "late@example.com", "first_name": "Tolu", "last_name": "Bello" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(find("email=late@example.com").await, vec![bare.clone()]);

    // Who may rectify: customers:write (MANAGER, CASHIER) only.
    for role in ["AGENT", "AUDITOR", "COMPLIANCE_OFFICER"] {
        let (_, token) = app.user_token(&t, &[role]).await;
        let r = app
            .patch(&path, &token, json!({ "email": "x@example.com" }))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}: {r:?}");
    }
    // Another tenant's customer answers like a missing one.
    let other = app.tenant(&admin, "other").await;
    for p in [
        path.clone(),
        "/v1/customers/cus_0000000000000000000000000000000a".into(),
    ] {
        let r = app
            .patch(
                &p,
                &other.manager_token,
                json!({ "email": "x@example.com" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    }
    // An erased customer cannot be rectified.
    app.raw_sql(&format!(
        "UPDATE customers SET status = 'erased' WHERE id = '{id}'"
    ))
    .await;
    let r = app
        .patch(
            &path,
            &t.manager_token,
            json!({ "email": "back@example.com" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.code(), "customer_erased");
    assert!(find("email=back@example.com").await.is_empty());
}

async fn personal_data_is_encrypted_at_rest_and_bound_to_its_row(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let a = create_ok(app, &t, profile(1)).await;
    let mut other = profile(2);
    other["first_name"] = json!("Kelechi");
    let b = create_ok(app, &t, other).await;

    let stored = app
        .raw_strings(&format!("SELECT pii FROM customers WHERE id = '{a}'"))
        .await;
    let stored = stored[0].clone();
    assert!(stored.starts_with("kx1."), "{stored}");
    // (Long enough that base64 cannot produce them by chance.)
    for plain in [
        "Okafor",
        "okafor",
        "8031234501",
        "1990-02-28",
        "Marina",
        "22123400001",
        "Lagos State",
    ] {
        assert!(!stored.contains(plain), "{plain} stored in the clear");
    }
    // The blind-index rows are HMACs, not values.
    let rows = app
        .raw_strings(&format!(
            "SELECT field || '=' || digest FROM customer_lookup WHERE customer_id = '{a}' ORDER BY field"
        ))
        .await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (row, field) in rows
        .iter()
        .zip(["email", "national_id:BVN", "national_id:SSN", "phone"])
    {
        let (f, digest) = row.split_once('=').unwrap();
        assert_eq!(f, field);
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    // B's ciphertext copied into A's row does not open there: no personal data comes back.
    app.raw_sql(&format!(
        "UPDATE customers SET pii = (SELECT pii FROM customers WHERE id = '{b}') WHERE id = '{a}'"
    ))
    .await;
    for path in [
        format!("/v1/customers/{a}?unmasked=true"),
        format!("/v1/customers/{a}"),
        "/v1/customers?unmasked=true".to_owned(),
    ] {
        let r = app.get(&path, &t.manager_token).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {r:?}");
        assert_eq!(r.code(), "internal_error");
        let text = r.body.to_string();
        assert!(
            !text.contains("Kelechi") && !text.contains("K***"),
            "{text}"
        );
        assert!(!text.contains("kx1"), "{text}");
    }
    // Nor does plaintext slipped into the column pass for personal data.
    app.raw_sql(&format!(
        "UPDATE customers SET pii = '{{\"name\":{{\"first\":\"Mallory\",\"last\":\"X\"}}}}' WHERE id = '{a}'"
    ))
    .await;
    let r = app
        .get(
            &format!("/v1/customers/{a}?unmasked=true"),
            &t.manager_token,
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
    assert!(!r.body.to_string().contains("Mallory"));
    // B itself is intact, and no revealed read of A was recorded.
    let r = app
        .get(
            &format!("/v1/customers/{b}?unmasked=true"),
            &t.manager_token,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["first_name"], "Kelechi");
    assert!(
        pii_reads(app, &t)
            .await
            .iter()
            .all(|e| e.target_id.as_deref() == Some(b.as_str()))
    );
}

async fn a_customer_key_rotation_re_encrypts_personal_data(app: &TestApp) {
    use kasho::ids::TenantId;
    use kasho::service::keys::KeyOwner;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let id = create_ok(app, &t, profile(3)).await;
    let read = |sql: String| async move { app.raw_strings(&sql).await[0].clone() };
    let before = read(format!("SELECT pii FROM customers WHERE id = '{id}'")).await;
    let tenant = TenantId::from_trusted(t.id.clone());
    let owner = KeyOwner::Customer(id.clone());
    let version = app
        .core
        .keyring
        .rotate_data_key(&tenant, &owner)
        .await
        .unwrap();
    assert_eq!(version, 2);
    app.core.keyring.run_pending().await.unwrap();
    let after = read(format!("SELECT pii FROM customers WHERE id = '{id}'")).await;
    assert_ne!(before, after);
    assert!(after.contains(".2."), "sealed under version 2: {after}");
    let r = app
        .get(
            &format!("/v1/customers/{id}?unmasked=true"),
            &t.manager_token,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_revealed(&r.body, 3);
    // Rectification keeps working under the new version.
    let r = app
        .patch(
            &format!("/v1/customers/{id}"),
            &t.manager_token,
            json!({ "nationality": "ZA" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

backend_tests!(
    personal_data_is_validated_field_by_field,
    personal_data_is_masked_unless_revealed_and_every_revealed_read_is_audited,
    a_customer_sees_itself_unmasked_and_nobody_else,
    search_finds_exact_matches_through_blind_indexes_and_never_across_tenants,
    searches_and_personal_data_never_reach_the_logs,
    rectification_replaces_the_data_and_its_blind_indexes_and_is_audited,
    personal_data_is_encrypted_at_rest_and_bound_to_its_row,
    a_customer_key_rotation_re_encrypts_personal_data,
);
