//! CORS from each tenant's allow-list: preflights answered only for listed origins, actual
//! responses readable only by pages of the caller's tenant, never `*`, never credentials.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Resp, TenantFixture, TestApp};

const A: &str = "https://app.acme.example";
const B: &str = "https://pay.globex.example:8443";

async fn set_origins(app: &TestApp, t: &TenantFixture, origins: Value) -> Resp {
    let mut policy = app.get("/v1/security/policy", &t.manager_token).await.body;
    policy["cors_allowed_origins"] = origins;
    app.request(
        Method::PUT,
        "/v1/security/policy",
        Some(&t.manager_token),
        Some(policy),
    )
    .await
}

async fn preflight(app: &TestApp, path: &str, origin: &str) -> Resp {
    app.send(
        Request::builder()
            .method(Method::OPTIONS)
            .uri(path)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

async fn with_origin(app: &TestApp, path: &str, token: Option<&str>, origin: &str) -> Resp {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("origin", origin);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    app.send(req.body(Body::empty()).unwrap()).await
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

fn varies_on_origin(r: &Resp) -> bool {
    r.headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

/// Never a wildcard, never credentials, whatever the answer.
fn never_wildcard_or_credentials(r: &Resp) {
    assert_ne!(header(r, "access-control-allow-origin"), Some("*"), "{r:?}");
    assert!(
        r.headers.get("access-control-allow-credentials").is_none(),
        "{r:?}"
    );
}

async fn origins_are_exact_and_refused_with_the_entry_named(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    for (bad, param) in [
        (json!(["*"]), "cors_allowed_origins[0]"),
        (json!([A, "null"]), "cors_allowed_origins[1]"),
        (
            json!(["http://app.acme.example"]),
            "cors_allowed_origins[0]",
        ),
        (
            json!(["https://app.acme.example/"]),
            "cors_allowed_origins[0]",
        ),
        (
            json!(["https://app.acme.example/login"]),
            "cors_allowed_origins[0]",
        ),
        (json!(["https://*.acme.example"]), "cors_allowed_origins[0]"),
        (json!([A, A, "app.acme.example"]), "cors_allowed_origins[2]"),
        (json!("https://app.acme.example"), "cors_allowed_origins"),
    ] {
        let r = set_origins(app, &t, bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {r:?}");
        assert_eq!(r.body["error"]["param"], param, "{bad}: {r:?}");
    }
    let many: Vec<String> = (0..21)
        .map(|i| format!("https://app{i}.acme.example"))
        .collect();
    let r = set_origins(app, &t, json!(many)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.body["error"]["param"], "cors_allowed_origins");
    // Nothing was saved, and no preflight is answered.
    let p = app.get("/v1/security/policy", &t.manager_token).await;
    assert_eq!(p.body["cors_allowed_origins"], json!([]));
    assert_eq!(
        preflight(app, "/v1/transfers", "https://app0.acme.example")
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Good entries are normalised (case, default port) and de-duplicated; localhost may be http.
    let r = set_origins(
        app,
        &t,
        json!([
            "https://APP.acme.example:443",
            A,
            "http://localhost:3000",
            "http://127.0.0.1:8080"
        ]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.body["cors_allowed_origins"],
        json!([A, "http://localhost:3000", "http://127.0.0.1:8080"])
    );
}

async fn preflights_are_answered_only_for_origins_some_tenant_lists(app: &TestApp) {
    let admin = app.platform_admin().await;
    let acme = app.tenant(&admin, "acme").await;
    assert_eq!(
        set_origins(app, &acme, json!([A])).await.status,
        StatusCode::OK
    );

    let ok = preflight(app, "/v1/transfers", A).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{ok:?}");
    assert_eq!(header(&ok, "access-control-allow-origin"), Some(A));
    let methods = header(&ok, "access-control-allow-methods").unwrap_or("");
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let allowed = header(&ok, "access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "idempotency-key",
        "kasho-timestamp",
        "kasho-nonce",
        "kasho-signature",
    ] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert_eq!(header(&ok, "access-control-max-age"), Some("600"));
    assert!(varies_on_origin(&ok));
    never_wildcard_or_credentials(&ok);
    // The preflight still carries the security headers.
    assert_eq!(header(&ok, "x-content-type-options"), Some("nosniff"));

    // An origin nobody lists (or a look-alike) is refused in the error shape, without CORS
    // headers.
    for other in [
        "https://evil.example",
        "https://app.acme.example.evil.example",
        "http://app.acme.example",
        "null",
        "*",
    ] {
        let r = preflight(app, "/v1/transfers", other).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{other}: {r:?}");
        assert_eq!(r.code(), "cors_origin_not_allowed");
        assert!(r.headers.get("access-control-allow-origin").is_none());
        assert!(r.headers.get("access-control-allow-methods").is_none());
        never_wildcard_or_credentials(&r);
    }

    // The look-up table follows the policy: removing the origin closes the door at once.
    assert_eq!(
        set_origins(app, &acme, json!([B])).await.status,
        StatusCode::OK
    );
    assert_eq!(
        preflight(app, "/v1/transfers", A).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        preflight(app, "/v1/transfers", B).await.status,
        StatusCode::NO_CONTENT
    );
}

async fn responses_are_readable_only_by_the_callers_tenants_origins(app: &TestApp) {
    let admin = app.platform_admin().await;
    let acme = app.tenant(&admin, "acme").await;
    let globex = app.tenant(&admin, "globex").await;
    set_origins(app, &acme, json!([A])).await;
    set_origins(app, &globex, json!([B])).await;

    // Acme's page reads Acme's answers, with the headers it needs exposed.
    let r = with_origin(app, "/v1/me", Some(&acme.manager_token), A).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(A));
    let exposed = header(&r, "access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in [
        "x-request-id",
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "idempotency-replayed",
    ] {
        assert!(exposed.contains(h), "{exposed}");
    }
    assert!(varies_on_origin(&r));
    never_wildcard_or_credentials(&r);

    // Globex's origin is known, but not to Acme: a page there cannot read Acme's answers.
    let r = with_origin(app, "/v1/me", Some(&acme.manager_token), B).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers.get("access-control-allow-origin").is_none(),
        "{r:?}"
    );
    assert!(varies_on_origin(&r));

    // Public routes, and refusals before anyone is authenticated: any tenant's list.
    let r = with_origin(app, "/healthz", None, B).await;
    assert_eq!(header(&r, "access-control-allow-origin"), Some(B));
    let r = with_origin(app, "/v1/me", None, A).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(A));
    // Unknown origins get nothing anywhere; requests without Origin still say Vary: Origin.
    let r = with_origin(app, "/healthz", None, "https://evil.example").await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    assert!(varies_on_origin(&r));
    let r = app.get("/v1/me", &acme.manager_token).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    assert!(varies_on_origin(&r));

    // CORS is not authorisation: a listed origin without a token is still refused.
    let r = with_origin(app, "/v1/accounts", None, A).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

backend_tests!(
    origins_are_exact_and_refused_with_the_entry_named,
    preflights_are_answered_only_for_origins_some_tenant_lists,
    responses_are_readable_only_by_the_callers_tenants_origins,
);
