//! API conventions: the error shape, request ids, strict JSON, body limits, lists, headers.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::support::{PASSWORD, TestApp};

async fn every_response_carries_a_request_id_and_errors_have_one_shape(app: &TestApp) {
    let admin = app.platform_admin().await;
    let responses = [
        app.request(Method::GET, "/healthz", None, None).await,
        app.request(Method::GET, "/v1/nothing-here", None, None)
            .await,
        app.request(Method::DELETE, "/v1/tenants", Some(&admin), None)
            .await,
        app.request(Method::GET, "/v1/me", None, None).await,
        app.post("/v1/tenants", Some(&admin), json!({ "slug": 5 }))
            .await,
    ];
    for r in &responses {
        let rid = r
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(rid.starts_with("req_"), "{r:?}");
        assert_eq!(r.headers.get("x-content-type-options").unwrap(), "nosniff");
        assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
        if !r.status.is_success() {
            let e = &r.body["error"];
            for field in ["type", "code", "message", "param", "request_id"] {
                assert!(e.get(field).is_some(), "{field} missing: {r:?}");
            }
            assert_eq!(e["request_id"], rid);
        }
    }
    assert_eq!(responses[0].status, StatusCode::OK);
    assert_eq!(responses[0].body["status"], "ok");
    assert_eq!(responses[1].status, StatusCode::NOT_FOUND);
    assert_eq!(responses[2].status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(responses[4].status, StatusCode::BAD_REQUEST);
    assert_eq!(responses[4].body["error"]["param"], "slug");
}

async fn request_bodies_are_strict_json_within_a_size_limit(app: &TestApp) {
    let admin = app.platform_admin().await;
    let send = |body: Vec<u8>, ctype: &str| {
        Request::post("/v1/tenants")
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", ctype.to_owned())
            .body(Body::from(body))
            .unwrap()
    };
    let r = app
        .send(send(
            b"slug=acme".to_vec(),
            "application/x-www-form-urlencoded",
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = app
        .send(send(b"{\"slug\": ".to_vec(), "application/json"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid_json");
    let dup = br#"{"slug":"a","slug":"b","name":"n","currencies":["USD"],"manager":{"email":"m@x.test"}}"#;
    let r = app.send(send(dup.to_vec(), "application/json")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "parameter_duplicate");
    assert_eq!(r.body["error"]["param"], "slug");
    let big = format!("{{\"slug\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let r = app.send(send(big.into_bytes(), "application/json")).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = app
        .post(
            "/v1/auth/login",
            None,
            json!({ "email": "a@b.test", "password": PASSWORD, "remember_me": true }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "parameter_unknown");
    assert_eq!(r.body["error"]["param"], "remember_me");
}

async fn head_requests_are_authorised_like_get(app: &TestApp) {
    let admin = app.platform_admin().await;
    let r = app
        .request(Method::HEAD, "/v1/me", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app.request(Method::HEAD, "/v1/me", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn list_parameters_are_validated(app: &TestApp) {
    let admin = app.platform_admin().await;
    for (q, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("starting_after=usr_x", "starting_after"),
        ("sort=asc", "sort"),
    ] {
        let r = app.get(&format!("/v1/tenants?{q}"), &admin).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {r:?}");
        assert_eq!(r.body["error"]["param"], param, "{q}");
    }
    let r = app.get("/v1/tenants?limit=100", &admin).await;
    assert_eq!(r.status, StatusCode::OK);
}

backend_tests!(
    every_response_carries_a_request_id_and_errors_have_one_shape,
    request_bodies_are_strict_json_within_a_size_limit,
    list_parameters_are_validated,
    head_requests_are_authorised_like_get,
);
