//! The OpenAPI document covers every route, and the docs page is served locally.

use axum::http::{Method, StatusCode};
use kasho::http::routes::{Access, RouteDef};

use crate::backend_tests;
use crate::support::TestApp;

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

backend_tests!(
    every_route_is_in_the_openapi_document,
    the_docs_page_is_served_without_a_cdn
);
