//! Readiness and metrics: `/readyz` reports each dependency without internals; `/metrics` is
//! absent unless a token is configured, refuses wrong tokens, and shows requests by route
//! template (never the concrete path), authentication failures and transfers.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::support::{Resp, TestApp};

const METRICS_TOKEN: &str = "mtok-0123456789abcdef0123456789abcdef";

async fn get_with(
    app_router: &axum::Router,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = Request::builder().method(Method::GET).uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = app_router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of the series `name{labels}` whose label set contains every one of `labels`
/// (summed over the others); 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

async fn readyz_reports_each_dependency(app: &TestApp) {
    let r = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.body,
        json!({ "status": "ready", "checks": {
            "database": "ok", "migrations": "ok", "redis": "not_configured" } })
    );
    assert_eq!(r.headers["cache-control"], "no-store");

    // Redis configured and answering (the suite's server at 127.0.0.1:6379).
    let (_, up) = app
        .instance_with(&[("redis_url", "redis://127.0.0.1:6379/0")])
        .await;
    let (s, body) = get_with(&up, "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains(r#""redis":"ok""#), "{body}");

    // Redis configured and unreachable: 503 naming the check, and nothing about why or where.
    let (_, down) = app
        .instance_with(&[("redis_url", "redis://:hunter2-redis@127.0.0.1:1/0")])
        .await;
    let started = std::time::Instant::now();
    let (s, body) = get_with(&down, "/readyz", None).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({ "status": "not_ready", "checks": {
            "database": "ok", "migrations": "ok", "redis": "unreachable" } })
    );
    for internal in ["127.0.0.1", "hunter2", "refused", "6379", ":1"] {
        assert!(!body.contains(internal), "`{internal}` in {body}");
    }

    // A migration the binary embeds is missing from the database: pending.
    app.raw_sql("DELETE FROM _sqlx_migrations WHERE version = 11")
        .await;
    let r = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body["checks"]["migrations"], "pending");
    assert_eq!(r.body["checks"]["database"], "ok");
    // Liveness does not depend on it.
    let r = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn metrics_are_404_without_a_token_and_need_the_token_when_configured(app: &TestApp) {
    let r = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    let r = app
        .request(Method::GET, "/metrics", Some(METRICS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

    let (core, router) = app.instance_with(&[("metrics_token", METRICS_TOKEN)]).await;
    let (s, body) = get_with(&router, "/metrics", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("authentication_required"), "{body}");
    let wrong = format!("Bearer {}x", METRICS_TOKEN);
    let (s, body) = get_with(&router, "/metrics", Some(&wrong)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    // An access token of a user is not the metrics token either.
    let admin = app.platform_admin().await;
    let (s, _) = get_with(&router, "/metrics", Some(&format!("Bearer {admin}"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The refusals are security events (refused tokens) in the platform chain.
    let refused = core
        .store
        .audit_chain_after("platform", 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "metrics.read")
        .count();
    assert_eq!(refused, 3);

    let (s, body) = get_with(
        &router,
        "/metrics",
        Some(&format!("Bearer {METRICS_TOKEN}")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("kasho_db_pool_connections"), "{body}");
    assert!(body.contains("kasho_db_pool_idle"), "{body}");
}

async fn metrics_count_requests_by_template_auth_failures_and_transfers(app: &TestApp) {
    let (_, router) = app.instance_with(&[("metrics_token", METRICS_TOKEN)]).await;
    let scrape = || async {
        let (s, body) = get_with(
            &router,
            "/metrics",
            Some(&format!("Bearer {METRICS_TOKEN}")),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body
    };
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "metrics").await;
    let before = scrape().await;

    // A concrete id in the path: the label is the template.
    let user_path = format!("/v1/users/{}", t.manager_id);
    let r: Resp = app.get(&user_path, &t.manager_token).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app.request(Method::GET, "/no/such/route", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .login(Some(&t.slug), "manager@metrics.test", "a wrong password!")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.get("/v1/me", "not-a-token").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A deposit moves money.
    let c = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "first_name": "Ada", "last_name": "Obi", "email": "ada@example.org" }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let a = app
        .post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": c.body["id"], "currency": "USD" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let d = app
        .post(
            "/v1/deposits",
            Some(&t.manager_token),
            json!({ "account_id": a.body["id"], "amount": 500, "currency": "USD" }),
        )
        .await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:?}");

    let after = scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let users = [
        ("method", "GET"),
        ("route", "/v1/users/{id}"),
        ("status", "200"),
    ];
    assert!(moved("kasho_http_requests_total", &users) >= 1.0, "{after}");
    assert!(
        !after.contains(&t.manager_id),
        "a concrete id became a label"
    );
    let unmatched = [("route", "(unmatched)"), ("status", "404")];
    assert!(moved("kasho_http_requests_total", &unmatched) >= 1.0);
    assert!(!after.contains("/no/such/route"));
    let hist = [
        ("method", "GET"),
        ("route", "/v1/users/{id}"),
        ("le", "+Inf"),
    ];
    assert!(
        moved("kasho_http_request_duration_seconds_bucket", &hist) >= 1.0,
        "{after}"
    );
    assert!(moved("kasho_auth_failures_total", &[("reason", "login_failed")]) >= 1.0);
    assert!(moved("kasho_auth_failures_total", &[("reason", "token_rejected")]) >= 1.0);
    assert!(
        moved("kasho_transfers_total", &[("outcome", "posted")]) >= 1.0,
        "{after}"
    );
    for pii in ["ada@example.org", "Obi", "manager@metrics.test"] {
        assert!(!after.contains(pii), "`{pii}` in the metrics");
    }
}

backend_tests!(
    readyz_reports_each_dependency,
    metrics_are_404_without_a_token_and_need_the_token_when_configured,
    metrics_count_requests_by_template_auth_failures_and_transfers,
);
