//! The verified-token and session cache (issue 15): a request whose session or API token was
//! checked recently reads nothing, yet a logout, disable, role change, suspension or API-token
//! revocation on one instance is refused on another within a second, and a cached session
//! still ends exactly at its idle timeout and absolute lifetime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use kasho::service::Core;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Backend, PASSWORD, Resp, TestApp, send_to};

/// How long another instance may take to refuse a revoked credential.
const PROPAGATION: Duration = Duration::from_secs(1);

fn get_request(path: &str, token: &str) -> Request<Body> {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

async fn get_on(router: &Router, path: &str, token: &str) -> Resp {
    send_to(router, get_request(path, token)).await
}

/// Waits (at most 3 s) until `core`'s invalidation channel is live, so its cache serves.
async fn cache_live(core: &Core) {
    let start = Instant::now();
    while !core.session_cache.live() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the invalidation channel never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Another instance on the same database, its cache live and holding `token`'s session or API
/// token (answered twice, the second time from the cache).
async fn warm_instance(app: &TestApp, path: &str, token: &str) -> (Arc<Core>, Router) {
    let (core, router) = app.instance_with(&[]).await;
    cache_live(&core).await;
    for _ in 0..2 {
        let r = get_on(&router, path, token).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    from_the_cache(&core, "warm", || get_on(&router, path, token)).await;
    (core, router)
}

/// Sends `request` until one answer (200) came from `core`'s cache without a database read:
/// at most 10 tries, for a loaded machine may let the channel's liveness lapse now and then
/// (which empties the cache, as it must).
async fn from_the_cache<F, Fut>(core: &Core, label: &str, request: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    for _ in 0..10 {
        let before = core.session_cache.stats();
        let r = request().await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {r:?}");
        let after = core.session_cache.stats();
        if after.hits == before.hits + 1 && after.misses == before.misses {
            return;
        }
    }
    panic!(
        "{label}: never answered from the cache: {:?}",
        core.session_cache.stats()
    );
}

/// Polls `router` with `token` until the answer is a refusal (never sleeping more than 10 ms at
/// a time); fails if it is still admitted after [`PROPAGATION`]. The refusal.
async fn refused_within_a_second(router: &Router, path: &str, token: &str) -> Resp {
    let start = Instant::now();
    loop {
        let r = get_on(router, path, token).await;
        if r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN {
            return r;
        }
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(
            start.elapsed() < PROPAGATION,
            "still admitted {:?} after the change",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_logout_on_one_instance_is_refused_on_another_within_a_second(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let (_, other) = warm_instance(app, "/v1/me", &cashier).await;

    let r = app.post("/v1/auth/logout", Some(&cashier), json!({})).await;
    assert!(r.status.is_success(), "{r:?}");
    // At once on the instance that wrote it.
    assert_eq!(
        app.get("/v1/me", &cashier).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = refused_within_a_second(&other, "/v1/me", &cashier).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
}

async fn a_disabled_user_is_refused_on_another_instance_within_a_second(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (uid, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let (_, other) = warm_instance(app, "/v1/me", &cashier).await;

    let r = app
        .post(
            &format!("/v1/users/{uid}/disable"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = refused_within_a_second(&other, "/v1/me", &cashier).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
}

async fn a_removed_role_is_refused_on_another_instance_within_a_second(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (uid, auditor) = app.user_token(&t, &["AUDITOR"]).await;
    let (_, other) = warm_instance(app, "/v1/audit-events", &auditor).await;

    let up = app
        .post(
            "/v1/auth/step-up",
            Some(&t.manager_token),
            json!({ "password": PASSWORD }),
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{up:?}");
    let r = app
        .request(
            Method::PUT,
            &format!("/v1/users/{uid}/roles"),
            Some(&t.manager_token),
            Some(json!({ "roles": ["CASHIER"] })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    refused_within_a_second(&other, "/v1/audit-events", &auditor).await;
}

async fn a_suspended_tenant_is_refused_on_another_instance_within_a_second(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let (_, other) = warm_instance(app, "/v1/me", &cashier).await;

    let r = app
        .post(
            &format!("/v1/tenants/{}/suspend", t.id),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = refused_within_a_second(&other, "/v1/me", &cashier).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
}

async fn a_revoked_api_token_is_refused_on_another_instance_within_a_second(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = app
        .post(
            "/v1/api-tokens",
            Some(&t.manager_token),
            json!({ "name": "ci", "scopes": ["accounts:read"], "expires_in": "30d" }),
        )
        .await;
    let r = if r.code() == "step_up_required" {
        app.post_stepping_up(
            "/v1/api-tokens",
            &t.manager_token,
            json!({ "name": "ci", "scopes": ["accounts:read"], "expires_in": "30d" }),
        )
        .await
    } else {
        r
    };
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let (_, other) = warm_instance(app, "/v1/accounts", &secret).await;

    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/api-tokens/{id}"),
            Some(&t.manager_token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(
        app.get("/v1/accounts", &secret).await.status,
        StatusCode::UNAUTHORIZED,
        "at once on the instance that wrote it"
    );
    let r = refused_within_a_second(&other, "/v1/accounts", &secret).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
}

/// `token` is admitted, and its third request in a row comes from the cache (the first may
/// record the use, which drops the entry; the second reads it again).
async fn served(app: &TestApp, token: &str, label: &str) {
    for _ in 0..2 {
        let r = app.get("/v1/me", token).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {r:?}");
    }
    from_the_cache(&app.core, label, || app.get("/v1/me", token)).await;
}

/// The cache answers from memory, yet the idle timeout and the absolute lifetime end the
/// session at exactly the same instant as without it (time is the injected clock's).
async fn a_cached_session_still_ends_at_its_idle_timeout_and_lifetime(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let mut p: Value = app.get("/v1/security/policy", &t.manager_token).await.body;
    p["session_idle_timeout_seconds"] = json!(600);
    p["session_absolute_lifetime_seconds"] = json!(3600);
    let r = app
        .request(
            Method::PUT,
            "/v1/security/policy",
            Some(&t.manager_token),
            Some(p),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    cache_live(&app.core).await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let at = app.token(Some("acme"), &email).await;
    served(app, &at, "signed in").await;

    // Idle: 599 s after the last recorded use it lives; 600 s after, it has ended.
    app.clock.advance_seconds(599);
    served(app, &at, "599 s idle").await;
    app.clock.advance_seconds(600);
    assert_eq!(
        app.get("/v1/me", &at).await.status,
        StatusCode::UNAUTHORIZED,
        "ten idle minutes end it, cached or not"
    );

    // Lifetime: used every nine minutes, a session still ends at its absolute lifetime.
    let at = app.token(Some("acme"), &email).await;
    let at = &at;
    for _ in 0..6 {
        app.clock.advance_seconds(9 * 60);
        served(app, at, "in use").await;
    }
    // 54 minutes in: one second before the hour it lives, at the hour it has ended.
    app.clock.advance_seconds(6 * 60 - 1);
    served(app, at, "one second before its lifetime").await;
    app.clock.advance_seconds(1);
    let r = app.get("/v1/me", at).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "at its lifetime: {r:?}");
}

/// Repeated requests with one token verify its signature once and read its session once.
async fn repeated_requests_are_answered_from_the_cache(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    cache_live(&app.core).await;
    for _ in 0..2 {
        assert_eq!(app.get("/v1/me", &cashier).await.status, StatusCode::OK);
    }
    // Twenty in a row without a database read or a signature check (a round is tried again if
    // the channel's liveness lapsed on a loaded machine, which empties the cache).
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let before = app.core.session_cache.stats();
        for _ in 0..20 {
            assert_eq!(app.get("/v1/me", &cashier).await.status, StatusCode::OK);
        }
        let after = app.core.session_cache.stats();
        assert_eq!(
            after.claims_hits - before.claims_hits,
            20,
            "no signature check"
        );
        if after.hits - before.hits == 20 && after.misses == before.misses {
            return;
        }
        rounds.push((before, after));
    }
    panic!("no round of 20 requests was answered from the cache: {rounds:?}");
}

backend_tests!(
    a_logout_on_one_instance_is_refused_on_another_within_a_second,
    a_disabled_user_is_refused_on_another_instance_within_a_second,
    a_removed_role_is_refused_on_another_instance_within_a_second,
    a_suspended_tenant_is_refused_on_another_instance_within_a_second,
    a_revoked_api_token_is_refused_on_another_instance_within_a_second,
    a_cached_session_still_ends_at_its_idle_timeout_and_lifetime,
    repeated_requests_are_answered_from_the_cache,
);

/// When the listener's connection is lost, the cache forgets everything and reads the
/// database until the channel is back (PostgreSQL only: SQLite's channel is a poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_empties_the_cache_until_it_is_back() {
    let app = TestApp::new(Backend::Postgres).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let (core, other) = warm_instance(&app, "/v1/me", &cashier).await;
    let losses = core.session_cache.stats().channel_losses;

    // Every Kasho listener on the server loses its connection (others recover the same way).
    app.raw_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN %kasho_auth_%' AND pid <> pg_backend_pid()",
    )
    .await;
    let start = Instant::now();
    while core.session_cache.stats().channel_losses == losses {
        assert!(start.elapsed() < PROPAGATION, "the loss went unnoticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What was cached before the loss is gone: the next request reads the session again.
    cache_live(&core).await;
    let before = core.session_cache.stats();
    assert_eq!(
        get_on(&other, "/v1/me", &cashier).await.status,
        StatusCode::OK
    );
    let after = core.session_cache.stats();
    assert_eq!(after.misses, before.misses + 1, "{before:?} {after:?}");
    app.cleanup().await;
}
