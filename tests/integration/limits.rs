//! Rate limits (per address, per sign-in route class, per credential, per tenant; in process and
//! shared through Redis, with the outage fallback) and intrusion bans (scanner paths, bursts of
//! 401/403/404, exemptions, shared bans). Every test runs on SQLite and PostgreSQL (the security
//! events land in the store); Redis tests use the Redis at 127.0.0.1:6379 with a fresh key
//! prefix, or a throw-away `redis-server` of their own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::support::{Backend, PASSWORD, Resp, TestApp};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// Runs each test (taking the backend) on SQLite and on PostgreSQL.
macro_rules! limit_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::support::Backend::Sqlite).await; }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::support::Backend::Postgres).await; }
            )*
        }
    };
}

fn prefix() -> String {
    format!("kt-{}:", uuid::Uuid::now_v7().simple())
}

/// A request from `client`, as a trusted proxy in 203.0.113.0/24 would forward it (the apps of
/// these tests trust that network where they need a second address).
async fn from(
    app: &TestApp,
    client: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-forwarded-for", client);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    app.send(req).await
}

async fn get(app: &TestApp, path: &str) -> Resp {
    app.request(Method::GET, path, None, None).await
}

fn header(r: &Resp, name: &str) -> i64 {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing on {r:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_limited(r: &Resp, class: &str, limit: i64, retry_after: i64) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.body["error"]["type"], "rate_limit_error", "{r:?}");
    assert_eq!(r.code(), "rate_limited");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("({class} limit)")),
        "{r:?}"
    );
    assert_eq!(header(r, "retry-after"), retry_after, "{r:?}");
    assert_eq!(header(r, "ratelimit-limit"), limit);
    assert_eq!(header(r, "ratelimit-remaining"), 0);
}

async fn events(app: &TestApp, kind: &str) -> Vec<kasho::domain::audit::AuditRecord> {
    app.audit_chain("platform")
        .await
        .into_iter()
        .filter(|r| r.security_event.as_deref() == Some(kind))
        .collect()
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is required at {url}: {e}"))
}

async fn every_request_is_limited_per_address_and_refills_with_the_clock(backend: Backend) {
    let app = TestApp::with_config(
        backend,
        &[
            ("rate_limit_ip", "3/60"),
            ("trusted_proxies", "203.0.113.0/24"),
        ],
    )
    .await;
    // Matched and unmatched paths draw on the same bucket; every answer says what is left.
    for (i, path) in ["/healthz", "/v1/no-such-route", "/healthz"]
        .iter()
        .enumerate()
    {
        let r = get(&app, path).await;
        assert_ne!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
        assert_eq!(header(&r, "ratelimit-limit"), 3);
        assert_eq!(header(&r, "ratelimit-remaining"), 2 - i as i64);
        assert!(header(&r, "ratelimit-reset") >= 20);
    }
    // The fourth is refused (one token every 20 s), whatever the path, in the error shape.
    let r = get(&app, "/healthz").await;
    assert_limited(&r, "ip", 3, 20);
    assert_eq!(header(&r, "ratelimit-reset"), 60);
    assert!(r.body["error"]["request_id"].is_string());
    assert_limited(&get(&app, "/v1/nope").await, "ip", 3, 20);
    // Another client address has its own bucket.
    let other = from(&app, "198.51.100.20", Method::GET, "/healthz", None).await;
    assert_eq!(other.status, StatusCode::OK, "{other:?}");
    assert_eq!(header(&other, "ratelimit-remaining"), 2);
    // Refused requests took nothing: 20 s later exactly one token is back.
    app.clock.advance_seconds(19);
    assert_limited(&get(&app, "/healthz").await, "ip", 3, 1);
    app.clock.advance_seconds(1);
    let r = get(&app, "/healthz").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(header(&r, "ratelimit-remaining"), 0);
    assert_limited(&get(&app, "/healthz").await, "ip", 3, 20);
    // A full period later the bucket is full again.
    app.clock.advance_seconds(60);
    let r = get(&app, "/healthz").await;
    assert_eq!(header(&r, "ratelimit-remaining"), 2, "{r:?}");
    app.cleanup().await;
}

async fn sessions(app: &TestApp, token: &str) -> usize {
    app.get("/v1/me/sessions", token).await.body["data"]
        .as_array()
        .unwrap()
        .len()
}

async fn sign_in_routes_have_their_own_stricter_buckets(backend: Backend) {
    let app = TestApp::with_config(
        backend,
        &[
            ("rate_limit_login", "2/60"),
            ("rate_limit_refresh", "2/60"),
            ("rate_limit_mfa", "2/60"),
            ("rate_limit_password_reset", "2/300"),
            ("trusted_proxies", "203.0.113.0/24"),
        ],
    )
    .await;
    let admin = app.platform_admin().await; // one sign-in
    let t = app.tenant(&admin, "acme").await; // a second one: the login bucket is empty
    let email = format!("manager@{}.test", t.slug);
    let before = sessions(&app, &t.manager_token).await;
    // A refused sign-in is not attempted: no session, no answer about the password.
    let r = app.login(Some(&t.slug), &email, PASSWORD).await;
    assert_limited(&r, "login", 2, 30);
    assert_eq!(
        sessions(&app, &t.manager_token).await,
        before,
        "a refused sign-in changed nothing"
    );
    // The other classes are untouched, and each has its own bucket.
    for (path, class, limit, retry) in [
        ("/v1/auth/refresh", "refresh", 2, 30),
        ("/v1/auth/mfa", "mfa", 2, 30),
        ("/v1/auth/password-reset", "password_reset", 2, 150),
    ] {
        for _ in 0..2 {
            let r = app.post(path, None, json!({})).await;
            assert_ne!(r.status, StatusCode::TOO_MANY_REQUESTS, "{path}: {r:?}");
            assert!(header(&r, "ratelimit-limit") <= 2, "{path}: {r:?}");
        }
        assert_limited(&app.post(path, None, json!({})).await, class, limit, retry);
    }
    // Step-up shares the MFA bucket, the reset confirmation the reset bucket (checked before
    // authentication, so even an anonymous attempt is refused).
    assert_limited(
        &app.post("/v1/auth/step-up", None, json!({})).await,
        "mfa",
        2,
        30,
    );
    assert_limited(
        &app.post("/v1/auth/password-reset/confirm", None, json!({}))
            .await,
        "password_reset",
        2,
        150,
    );
    // Another address signs in; this one can again after 30 s.
    let r = from(&app, "198.51.100.30", Method::POST, "/v1/auth/login", None).await;
    assert_ne!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    app.clock.advance_seconds(30);
    let r = app.login(Some(&t.slug), &email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(header(&r, "ratelimit-remaining"), 0);
    assert_eq!(sessions(&app, &t.manager_token).await, before + 1);
    // Other routes are only limited per address.
    let r = app.get("/v1/me", &t.manager_token).await;
    assert_eq!(r.status, StatusCode::OK);
    app.cleanup().await;
}

async fn credentials_and_tenants_have_buckets_of_their_own(backend: Backend) {
    let app = TestApp::with_config(
        backend,
        &[
            ("rate_limit_credential", "4/60"),
            ("rate_limit_tenant", "6/60"),
            ("trusted_proxies", "203.0.113.0/24"),
        ],
    )
    .await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await; // the manager's session made one request
    let other = app.tenant(&admin, "globex").await;
    let m = &t.manager_token;
    for remaining in [2, 1, 0] {
        let r = app.get("/v1/me", m).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        // The tightest bucket is the session's.
        assert_eq!(header(&r, "ratelimit-limit"), 4);
        assert_eq!(header(&r, "ratelimit-remaining"), remaining);
    }
    assert_limited(&app.get("/v1/me", m).await, "credential", 4, 15);
    // From another address the session is just as spent: the bucket is the credential's.
    let r = from(&app, "198.51.100.40", Method::GET, "/v1/me", Some(m)).await;
    assert_limited(&r, "credential", 4, 15);
    // A second session of the same manager has its own bucket, but shares the tenant's: the
    // tenant has 2 of its 6 left.
    let m2 = app
        .token(Some(&t.slug), &format!("manager@{}.test", t.slug))
        .await;
    let r = app.get("/v1/me", &m2).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(header(&r, "ratelimit-limit"), 6);
    assert_eq!(header(&r, "ratelimit-remaining"), 1);
    assert_eq!(app.get("/v1/me", &m2).await.status, StatusCode::OK);
    assert_limited(&app.get("/v1/me", &m2).await, "tenant", 6, 10);
    // Another tenant is not affected.
    assert_eq!(
        app.get("/v1/me", &other.manager_token).await.status,
        StatusCode::OK
    );
    // Platform admins have no tenant: only their session's bucket applies.
    assert_eq!(app.get("/v1/tenants", &admin).await.status, StatusCode::OK);
    // Time refills both.
    app.clock.advance_seconds(15);
    assert_eq!(app.get("/v1/me", m).await.status, StatusCode::OK);
    app.cleanup().await;
}

async fn instances_sharing_redis_share_their_buckets(backend: Backend) {
    let p = prefix();
    let cfg = [
        ("rate_limit_ip", "3/60"),
        ("redis_url", SHARED_REDIS),
        ("redis_key_prefix", p.as_str()),
    ];
    let a = TestApp::with_config(backend, &cfg).await;
    let b = TestApp::with_config(backend, &cfg).await;
    b.clock.set(a.clock_now());
    for _ in 0..3 {
        assert_eq!(get(&a, "/healthz").await.status, StatusCode::OK);
    }
    // The second instance sees the bucket the first one emptied.
    assert_limited(&get(&b, "/healthz").await, "ip", 3, 20);
    // The bucket is one Redis key under the prefix, expiring after the refill period.
    let mut conn = redis_conn(SHARED_REDIS).await;
    let key = format!("{p}rl:ip:203.0.113.7");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{key} has TTL {ttl} ms");
    // Time (the instances' clock) refills it for both.
    a.clock.advance_seconds(20);
    b.clock.advance_seconds(20);
    assert_eq!(get(&b, "/healthz").await.status, StatusCode::OK);
    assert_limited(&get(&a, "/healthz").await, "ip", 3, 20);
    assert!(
        events(&a, "rate_limit_backend_unavailable")
            .await
            .is_empty()
    );
    a.cleanup().await;
    b.cleanup().await;
}

/// A throw-away `redis-server`, killed (SIGKILL) when dropped, even by a failing test.
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A throw-away `redis-server` on `port`, answering PING.
async fn start_redis(port: u16) -> RedisServer {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for the outage test");
    let server = RedisServer(child);
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(c) = redis::Client::open(url.as_str())
            && let Ok(mut conn) = c.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start on port {port}");
}

async fn a_redis_outage_falls_back_to_local_limits_and_recovers(backend: Backend) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let p = prefix();
    let cfg = [
        ("rate_limit_ip", "4/60"),
        ("redis_url", url.as_str()),
        ("redis_key_prefix", p.as_str()),
    ];
    let redis = start_redis(port).await;
    let a = TestApp::with_config(backend, &cfg).await;
    let b = TestApp::with_config(backend, &cfg).await;
    b.clock.set(a.clock_now());
    assert_eq!(get(&a, "/healthz").await.status, StatusCode::OK);
    let key = format!("{p}rl:ip:203.0.113.7");
    let mut conn = redis_conn(&url).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1, "the bucket lives in Redis");

    // Redis dies: requests keep being served, on this instance's own buckets (full: 4).
    drop(redis); // SIGKILL
    let started = std::time::Instant::now();
    for remaining in [3, 2, 1, 0] {
        let r = get(&a, "/healthz").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(header(&r, "ratelimit-remaining"), remaining);
    }
    assert_limited(&get(&a, "/healthz").await, "ip", 4, 15);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a dead Redis stalled requests: {:?}",
        started.elapsed()
    );
    let down = events(&a, "rate_limit_backend_unavailable").await;
    assert_eq!(down.len(), 1, "one event per outage: {down:?}");
    assert_eq!(down[0].actor_type, "system");
    assert_eq!(down[0].tenant_id, None);
    // Retried every 5 s (of the app's clock) while it stays down: still one event.
    a.clock.advance_seconds(60);
    assert_eq!(get(&a, "/healthz").await.status, StatusCode::OK);
    assert_eq!(events(&a, "rate_limit_backend_unavailable").await.len(), 1);
    assert!(events(&a, "rate_limit_backend_restored").await.is_empty());

    // Redis is back (empty) on the same port: after the retry interval the instance returns to it.
    let redis = start_redis(port).await;
    a.clock.advance_seconds(5);
    b.clock.set(a.clock_now());
    for _ in 0..4 {
        assert_eq!(get(&a, "/healthz").await.status, StatusCode::OK);
    }
    let up = events(&a, "rate_limit_backend_restored").await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(events(&a, "rate_limit_backend_unavailable").await.len(), 1);
    // ... and the bucket is shared again: the other instance finds it empty.
    assert_limited(&get(&b, "/healthz").await, "ip", 4, 15);
    drop(redis);
    a.cleanup().await;
    b.cleanup().await;
}

async fn a_scanner_path_bans_the_address_until_the_ban_ends(backend: Backend) {
    let app = TestApp::with_config(backend, &[("trusted_proxies", "203.0.113.0/24")]).await;
    let r = get(&app, "/.env").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "ip_banned");
    assert_eq!(header(&r, "retry-after"), 900);
    let bans = events(&app, "intrusion_ban").await;
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(
        bans[0].reason.as_deref(),
        Some("scanner_path;ban_seconds=900")
    );
    assert_eq!(bans[0].target_id.as_deref(), Some("/.env"));
    assert_eq!(bans[0].tenant_id, None);
    // Everything from the address is refused before any other work, even a valid sign-in.
    app.clock.advance_seconds(600);
    let r = app.login(None, "nobody@example.com", PASSWORD).await;
    assert_eq!(r.code(), "ip_banned", "{r:?}");
    assert_eq!(header(&r, "retry-after"), 300);
    let r = get(&app, "/healthz").await;
    assert_eq!(r.code(), "ip_banned");
    assert!(
        events(&app, "login_failed").await.is_empty(),
        "no sign-in was attempted"
    );
    assert_eq!(
        events(&app, "intrusion_ban").await.len(),
        1,
        "one event per ban"
    );
    // Another address is served; other probes are recognised too.
    let r = from(&app, "198.51.100.50", Method::GET, "/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = from(&app, "198.51.100.51", Method::GET, "/wp-login.php", None).await;
    assert_eq!(r.code(), "ip_banned");
    let r = from(
        &app,
        "198.51.100.52",
        Method::GET,
        "/static/..%2f..%2fetc/passwd",
        None,
    )
    .await;
    assert_eq!(r.code(), "ip_banned");
    assert_eq!(events(&app, "intrusion_ban").await.len(), 3);
    // The ban ends after intrusion_ban_seconds.
    app.clock.advance_seconds(300);
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
    app.cleanup().await;
}

async fn a_burst_of_errors_bans_the_address(backend: Backend) {
    let app = TestApp::with_config(
        backend,
        &[
            ("intrusion_error_burst", "5/60"),
            ("intrusion_ban_seconds", "120"),
        ],
    )
    .await;
    // 404s and 401s count; the sixth error within the window bans.
    for i in 0..6 {
        let r = if i % 2 == 0 {
            get(&app, "/v1/no-such-route").await
        } else {
            get(&app, "/v1/me").await
        };
        assert!(
            r.status == StatusCode::NOT_FOUND || r.status == StatusCode::UNAUTHORIZED,
            "{i}: {r:?}"
        );
        assert!(events(&app, "intrusion_ban").await.is_empty() || i == 5);
    }
    let bans = events(&app, "intrusion_ban").await;
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].reason.as_deref(), Some("burst;ban_seconds=120"));
    assert_eq!(bans[0].target_id.as_deref(), Some("/v1/me"));
    let r = get(&app, "/healthz").await;
    assert_eq!(r.code(), "ip_banned", "{r:?}");
    assert_eq!(header(&r, "retry-after"), 120);
    app.clock.advance_seconds(120);
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
    // Errors spread out over time refill the window and never ban.
    for _ in 0..10 {
        app.clock.advance_seconds(12);
        assert_eq!(
            get(&app, "/v1/no-such-route").await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(events(&app, "intrusion_ban").await.len(), 1);
    app.cleanup().await;
}

async fn exempt_addresses_are_never_banned(backend: Backend) {
    let app = TestApp::with_config(
        backend,
        &[
            ("intrusion_error_burst", "3/60"),
            ("intrusion_exempt", "10.0.0.0/8, 203.0.113.0/24"),
        ],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            get(&app, "/v1/no-such-route").await.status,
            StatusCode::NOT_FOUND
        );
    }
    // Even a scanner path is just a 404 for an exempt address.
    assert_eq!(
        get(&app, "/.git/config").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
    assert!(events(&app, "intrusion_ban").await.is_empty());
    app.cleanup().await;
}

async fn bans_are_shared_through_redis(backend: Backend) {
    let p = prefix();
    let cfg = [
        ("redis_url", SHARED_REDIS),
        ("redis_key_prefix", p.as_str()),
        ("intrusion_ban_seconds", "60"),
    ];
    let a = TestApp::with_config(backend, &cfg).await;
    let b = TestApp::with_config(backend, &cfg).await;
    b.clock.set(a.clock_now());
    assert_eq!(get(&a, "/.aws/credentials").await.code(), "ip_banned");
    let r = get(&b, "/healthz").await;
    assert_eq!(
        r.code(),
        "ip_banned",
        "the other instance honours the ban: {r:?}"
    );
    assert_eq!(header(&r, "retry-after"), 60);
    // One ban, one event, written by the instance that banned.
    assert_eq!(events(&a, "intrusion_ban").await.len(), 1);
    assert!(events(&b, "intrusion_ban").await.is_empty());
    let mut conn = redis_conn(SHARED_REDIS).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{p}ban:203.0.113.7"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1);
    b.clock.advance_seconds(60);
    assert_eq!(get(&b, "/healthz").await.status, StatusCode::OK);
    a.cleanup().await;
    b.cleanup().await;
}

limit_tests!(
    every_request_is_limited_per_address_and_refills_with_the_clock,
    sign_in_routes_have_their_own_stricter_buckets,
    credentials_and_tenants_have_buckets_of_their_own,
    instances_sharing_redis_share_their_buckets,
    a_redis_outage_falls_back_to_local_limits_and_recovers,
    a_scanner_path_bans_the_address_until_the_ban_ends,
    a_burst_of_errors_bans_the_address,
    exempt_addresses_are_never_banned,
    bans_are_shared_through_redis,
);
