//! Tenant lifecycle and validation.

use axum::http::StatusCode;
use serde_json::json;

use crate::backend_tests;
use crate::support::{PASSWORD, TestApp};

async fn creating_a_tenant_validates_every_field(app: &TestApp) {
    let admin = app.platform_admin().await;
    let valid = json!({ "slug": "acme", "name": "Acme", "currencies": ["USD"], "manager": { "email": "m@acme.test" } });
    let cases = [
        ("slug", json!("Acme Pay"), "slug", "parameter_invalid"),
        (
            "currencies",
            json!(["USD", "XYZ"]),
            "currencies",
            "parameter_invalid",
        ),
        ("currencies", json!([]), "currencies", "parameter_invalid"),
        (
            "currencies",
            json!("USD"),
            "currencies",
            "parameter_invalid",
        ),
        ("name", json!(""), "name", "parameter_invalid"),
        // Nobody sets another person's password: the manager chooses its own.
        (
            "manager",
            json!({ "email": "m@acme.test", "password": PASSWORD }),
            "manager.password",
            "parameter_unknown",
        ),
        (
            "manager",
            json!({ "email": "not-an-email" }),
            "manager.email",
            "parameter_invalid",
        ),
        ("manager", json!({}), "manager.email", "parameter_missing"),
        (
            "manager",
            json!({ "email": "m@acme.test", "role": "ADMIN" }),
            "manager.role",
            "parameter_unknown",
        ),
        ("extra", json!(true), "extra", "parameter_unknown"),
    ];
    for (field, value, param, code) in cases {
        let mut body = valid.clone();
        body[field] = value;
        let r = app.post("/v1/tenants", Some(&admin), body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {r:?}");
        assert_eq!(r.body["error"]["param"], param, "{field}: {r:?}");
        assert_eq!(r.code(), code, "{field}");
    }
    // Nothing was created by any of them.
    let list = app.get("/v1/tenants", &admin).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 0);

    let r = app.post("/v1/tenants", Some(&admin), valid.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["object"], "tenant");
    assert!(r.body["id"].as_str().unwrap().starts_with("ten_"));
    assert_eq!(r.body["currencies"], json!(["USD"]));
    assert_eq!(r.body["status"], "active");

    let dup = app.post("/v1/tenants", Some(&admin), valid).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.code(), "slug_taken");
    assert_eq!(dup.body["error"]["param"], "slug");
}

async fn tenants_list_with_cursor_pagination(app: &TestApp) {
    let admin = app.platform_admin().await;
    let mut ids = Vec::new();
    for slug in ["alpha", "bravo", "charlie"] {
        ids.push(app.tenant(&admin, slug).await.id);
    }
    let page1 = app.get("/v1/tenants?limit=2", &admin).await;
    assert_eq!(page1.status, StatusCode::OK);
    assert_eq!(page1.body["object"], "list");
    assert_eq!(page1.body["has_more"], true);
    let got: Vec<&str> = page1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()], "newest first");
    let page2 = app
        .get(
            &format!("/v1/tenants?limit=2&starting_after={}", ids[1]),
            &admin,
        )
        .await;
    assert_eq!(page2.body["has_more"], false);
    assert_eq!(page2.body["data"][0]["id"], ids[0].as_str());

    let one = app.get(&format!("/v1/tenants/{}", ids[0]), &admin).await;
    assert_eq!(one.body["slug"], "alpha");
    for missing in [
        "ten_0000000000000000000000000000000a",
        "nonsense",
        "usr_0000000000000000000000000000000a",
    ] {
        let r = app.get(&format!("/v1/tenants/{missing}"), &admin).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(r.code(), "resource_missing");
    }
}

async fn a_platform_admin_has_no_access_to_tenant_business_data(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    for path in [
        "/v1/users".to_owned(),
        format!("/v1/users/{}", t.manager_id),
    ] {
        let r = app.get(&path, &admin).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    let r = app
        .post(
            "/v1/users",
            Some(&admin),
            json!({ "email": "x@acme.test", "roles": ["MANAGER"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The platform's audit view holds platform events only, not the tenant's.
    let audit = app.get("/v1/audit-events?limit=100", &admin).await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(
        audit.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"].is_null()),
        "{}",
        audit.body
    );
}

backend_tests!(
    creating_a_tenant_validates_every_field,
    tenants_list_with_cursor_pagination,
    a_platform_admin_has_no_access_to_tenant_business_data,
);
