//! Issue 13 items 5, 10 and 11: credential guesses are counted before they are checked, so no
//! burst on any number of instances (database or Redis counters) gets more than the configured
//! number checked; guesses naming an unknown tenant count against the address only, and a
//! platform sign-in needs its client certificate before anything is counted; the staff
//! allow-list holds on every request and refresh, and narrowing it ends sessions.
//!
//! Verifications are counted by the password and code checks themselves
//! (`Core::verifications`, the per-core view of `kasho_credential_verifications_total`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use kasho::observability::CredentialKind;
use kasho::service::Core;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::mfa::{code_now, enable_mfa};
use crate::support::{PASSWORD, Resp, TestApp};

/// The default lockout: 10 guesses, then 30 minutes.
const LIMIT: u64 = 10;
const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// The peer of `instance_with` routers: trusted, so `X-Forwarded-For` names the client.
const PROXY: &str = "203.0.113.9/32";

/// One request to `router`, optionally from `client` (via the trusted proxy) and with a
/// bearer token; extensions (a client certificate) may be added by `with`.
async fn send(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    client: Option<&str>,
    body: Option<Value>,
    with: impl FnOnce(&mut Request<Body>),
) -> Resp {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ip) = client {
        req = req.header("x-forwarded-for", ip);
    }
    let mut req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    with(&mut req);
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn login_body(tenant: Option<&str>, email: &str, password: &str) -> Value {
    let mut b = json!({ "email": email, "password": password });
    if let Some(t) = tenant {
        b["tenant"] = json!(t);
    }
    b
}

fn verified(cores: &[Arc<Core>], kind: CredentialKind) -> u64 {
    cores.iter().map(|c| c.verifications.count(kind)).sum()
}

/// `n` wrong-password sign-ins at once, spread over `routers`, each from its own address.
/// Answers the statuses and codes.
async fn burst(
    routers: &[Router],
    tenant: &str,
    email: &str,
    n: usize,
    wave: usize,
) -> Vec<(StatusCode, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let router = routers[i % routers.len()].clone();
            let body = login_body(Some(tenant), email, &format!("wrong guess {wave}-{i}"));
            let client = format!("198.51.{}.{}", 100 + wave % 100, i % 250 + 1);
            tokio::spawn(async move {
                let r = send(
                    &router,
                    Method::POST,
                    "/v1/auth/login",
                    None,
                    Some(&client),
                    Some(body),
                    |_| {},
                )
                .await;
                (r.status, r.code().to_owned())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Attacks one account with waves of 200 concurrent wrong passwords from many addresses over
/// `routers` (instances sharing the counters) until a wave gets nothing checked. Never more
/// than the limit is checked, in any wave or in all; then even the right password is refused
/// (without being checked) until the lock ends.
async fn siege(app: &TestApp, routers: &[Router], cores: &[Arc<Core>], tenant: &str, email: &str) {
    let before = verified(cores, CredentialKind::Password);
    let mut waves = 0;
    loop {
        waves += 1;
        assert!(waves <= 15, "the account never locked");
        let answers = burst(routers, tenant, email, 200, waves).await;
        let checked = verified(cores, CredentialKind::Password) - before;
        assert!(
            checked <= LIMIT,
            "wave {waves}: {checked} passwords checked"
        );
        let wrong = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::UNAUTHORIZED)
            .count();
        for (s, code) in &answers {
            assert!(
                (*s == StatusCode::UNAUTHORIZED && code == "invalid_credentials")
                    || (*s == StatusCode::TOO_MANY_REQUESTS
                        && (code == "too_many_attempts" || code == "account_locked")),
                "{s} {code}"
            );
        }
        if wrong == 0 {
            assert!(answers.iter().all(|(_, c)| c == "account_locked"));
            break;
        }
        // Past the progressive delay, and again.
        app.clock.advance_seconds(31);
    }
    let checked = verified(cores, CredentialKind::Password) - before;
    assert_eq!(
        checked, LIMIT,
        "exactly the limit was checked over {waves} waves"
    );
    // The right password is refused while locked, on every instance, and is not even checked.
    for r in routers {
        let ok = send(
            r,
            Method::POST,
            "/v1/auth/login",
            None,
            Some("192.0.2.200"),
            Some(login_body(Some(tenant), email, PASSWORD)),
            |_| {},
        )
        .await;
        assert_eq!(ok.status, StatusCode::TOO_MANY_REQUESTS, "{ok:?}");
        assert_eq!(ok.code(), "account_locked");
    }
    assert_eq!(verified(cores, CredentialKind::Password) - before, LIMIT);
    // The lock ends 30 minutes after it began.
    app.clock.advance_seconds(30 * 60 + 1);
    let ok = send(
        &routers[0],
        Method::POST,
        "/v1/auth/login",
        None,
        Some("192.0.2.200"),
        Some(login_body(Some(tenant), email, PASSWORD)),
        |_| {},
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

async fn concurrent_wrong_passwords_on_two_instances_check_at_most_the_limit(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "siege").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let (a, ra) = app.instance_with(&[("trusted_proxies", PROXY)]).await;
    let (b, rb) = app.instance_with(&[("trusted_proxies", PROXY)]).await;
    siege(app, &[ra, rb], &[a, b], "siege", &email).await;
    // The counters are in the database (no Redis here): the attackers' addresses are there.
    let keys = app.raw_strings("SELECT key FROM login_throttle").await;
    assert!(keys.iter().any(|k| k.starts_with("ip:198.51.")), "{keys:?}");
}

async fn concurrent_wrong_passwords_through_the_redis_limiter_check_at_most_the_limit(
    app: &TestApp,
) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "siege").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let prefix = format!("kt{}:", uuid::Uuid::now_v7().simple());
    let config = [
        ("trusted_proxies", PROXY),
        ("redis_url", SHARED_REDIS),
        ("redis_key_prefix", prefix.as_str()),
    ];
    let (a, ra) = app.instance_with(&config).await;
    let (b, rb) = app.instance_with(&config).await;
    app.raw_sql("DELETE FROM login_throttle").await;
    siege(app, &[ra, rb], &[a, b], "siege", &email).await;
    // The guesses were counted in Redis, and in the database, which decides.
    let keys = app.raw_strings("SELECT key FROM login_throttle").await;
    assert!(keys.iter().any(|k| k.starts_with("ip:198.51.")), "{keys:?}");
    let mut conn = redis::Client::open(SHARED_REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}guess:ip:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!found.is_empty(), "address counters live in Redis");
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !all.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&all)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// With Redis configured but unreachable, guesses are counted in the database (shared by the
/// instances too), never in one process's memory: the limit holds all the same.
async fn with_redis_unreachable_the_database_counts_guesses(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "siege").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let config = [
        ("trusted_proxies", PROXY),
        ("redis_url", "redis://127.0.0.1:1/0"),
    ];
    let (a, ra) = app.instance_with(&config).await;
    let (b, rb) = app.instance_with(&config).await;
    siege(app, &[ra, rb], &[a, b], "siege", &email).await;
    let keys = app.raw_strings("SELECT key FROM login_throttle").await;
    assert!(keys.iter().any(|k| k.starts_with("ip:198.51.")), "{keys:?}");
}

/// Step-up and password change are guesses at the same account: a burst of both checks at
/// most the limit.
async fn concurrent_step_ups_and_password_changes_share_the_limit(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "siege").await;
    let (_, token) = app.user_token(&t, &["CASHIER"]).await;
    let before = verified(std::slice::from_ref(&app.core), CredentialKind::Password);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let router = app.router.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let (path, body) = if i % 2 == 0 {
                    (
                        "/v1/auth/step-up",
                        json!({ "password": format!("wrong {i}") }),
                    )
                } else {
                    (
                        "/v1/me/password",
                        json!({ "current_password": format!("wrong {i}"),
                                "new_password": "a brand new passphrase of mine" }),
                    )
                };
                send(
                    &router,
                    Method::POST,
                    path,
                    Some(&token),
                    None,
                    Some(body),
                    |_| {},
                )
                .await
                .status
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(
            [
                StatusCode::UNAUTHORIZED,
                StatusCode::BAD_REQUEST,
                StatusCode::TOO_MANY_REQUESTS
            ]
            .contains(&s),
            "{s}"
        );
        refused += usize::from(s == StatusCode::TOO_MANY_REQUESTS);
    }
    let checked = verified(std::slice::from_ref(&app.core), CredentialKind::Password) - before;
    assert!((1..=LIMIT).contains(&checked), "{checked} checked");
    assert_eq!(
        refused as u64,
        200 - checked,
        "the others were refused unchecked"
    );
    // Operators see the checks as a metric.
    let text = kasho::observability::render().unwrap_or_default();
    assert!(
        text.contains("kasho_credential_verifications_total{kind=\"password\"}"),
        "{text}"
    );
}

/// 60 codes at once against one MFA challenge: at most the challenge's cap (5) is checked; the
/// challenge's own count is atomic too.
async fn concurrent_codes_against_one_challenge_check_at_most_the_cap(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "siege").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let token = app.token(Some("siege"), &email).await;
    let (secret, _) = enable_mfa(app, &token).await;
    let challenge = || {
        let email = email.clone();
        async move {
            let r = app.login(Some("siege"), &email, PASSWORD).await;
            assert_eq!(r.body["mfa_required"], true, "{r:?}");
            r.body["mfa_token"].as_str().unwrap().to_owned()
        }
    };
    let mfa_token = challenge().await;
    let wrong = if code_now(app, &secret) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let before = verified(std::slice::from_ref(&app.core), CredentialKind::Totp);
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let router = app.router.clone();
            let body = json!({ "mfa_token": mfa_token, "code": wrong });
            tokio::spawn(async move {
                send(
                    &router,
                    Method::POST,
                    "/v1/auth/mfa",
                    None,
                    None,
                    Some(body),
                    |_| {},
                )
                .await
                .status
            })
        })
        .collect();
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s.is_client_error(), "{s}");
    }
    let checked = verified(std::slice::from_ref(&app.core), CredentialKind::Totp) - before;
    assert!(
        (1..=kasho::service::mfa::CHALLENGE_MAX_FAILURES as u64).contains(&checked),
        "{checked} codes checked"
    );

    // The challenge's own count, raced directly: exactly its cap is admitted.
    app.clock.advance_seconds(31);
    let fresh = challenge().await;
    let hash = kasho::crypto::sha256_hex(fresh.as_bytes());
    let now = app.clock_now();
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let core = app.core.clone();
            let hash = hash.clone();
            tokio::spawn(async move {
                core.store
                    .count_mfa_attempt(&hash, now, kasho::service::mfa::CHALLENGE_MAX_FAILURES)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += i64::from(t.await.unwrap());
    }
    assert_eq!(admitted, kasho::service::mfa::CHALLENGE_MAX_FAILURES);
}

// ---------------------------------------------------------------------------------------------
// Item 10.

async fn platform_admin(app: &TestApp) -> String {
    let email = format!("root-{}@platform.test", uuid::Uuid::now_v7().simple());
    let user = kasho::store::NewUser {
        id: kasho::ids::UserId::generate(),
        tenant_id: None,
        email_hash: kasho::service::users::email_hash(
            &app.core,
            None,
            kasho::domain::values::Email::parse(&email)
                .unwrap()
                .as_str(),
        ),
        email: kasho::domain::values::Email::parse(&email)
            .unwrap()
            .as_str()
            .to_owned(),
        password_hash: app.core.hasher.hash(&PASSWORD.into()).await.unwrap(),
        roles: vec![kasho::domain::authz::Role::PlatformAdmin],
        created_at: app.core.clock.now(),
    };
    app.core.store.create_user(&user, &[]).await.unwrap();
    email
}

/// Guesses naming a tenant that does not exist never count against an account (before, they
/// landed on the platform admin's key and locked it), and are throttled by address.
async fn unknown_tenant_guesses_count_against_the_address_only(app: &TestApp) {
    let admin = platform_admin(app).await;
    for i in 0..12 {
        let r = app
            .login(Some("no-such-tenant"), &admin, &format!("wrong {i}"))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}: {r:?}");
        assert_eq!(r.code(), "invalid_credentials");
    }
    let keys = app.raw_strings("SELECT key FROM login_throttle").await;
    assert_eq!(keys, vec!["ip:203.0.113.7".to_owned()], "address only");
    let r = app.login(None, &admin, PASSWORD).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the real platform admin is not locked: {r:?}"
    );

    // The address's own budget still applies to unknown tenants.
    let (_, router) = app.instance_with(&[("login_ip_max_failures", "5")]).await;
    for i in 0..5 {
        let r = send(
            &router,
            Method::POST,
            "/v1/auth/login",
            None,
            None,
            Some(login_body(
                Some("ghost-town"),
                "x@ghost.test",
                &format!("w{i}"),
            )),
            |_| {},
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}: {r:?}");
    }
    let r = send(
        &router,
        Method::POST,
        "/v1/auth/login",
        None,
        None,
        Some(login_body(Some("ghost-town"), "x@ghost.test", "w6")),
        |_| {},
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "too_many_attempts");
}

/// With `platform_admin_client_cert`, a platform sign-in without the certificate is refused
/// before anything is counted; and naming a tenant does not turn a guess at a platform account
/// into something counted against it.
async fn platform_sign_in_needs_the_certificate_before_anything_is_counted(app: &TestApp) {
    let admin = platform_admin(app).await;
    let dir = app.data_dir.path();
    let files: Vec<String> = ["cert.pem", "key.pem", "client-ca.pem"]
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    let (core, router) = app
        .instance_with(&[
            ("tls_cert_file", files[0].as_str()),
            ("tls_key_file", files[1].as_str()),
            ("tls_client_ca_file", files[2].as_str()),
            ("platform_admin_client_cert", "true"),
        ])
        .await;
    let with_cert = |req: &mut Request<Body>| {
        req.extensions_mut().insert(kasho::tls::ClientCertificate {
            sha256: "00".repeat(32),
        });
    };
    for i in 0..12 {
        let r = send(
            &router,
            Method::POST,
            "/v1/auth/login",
            None,
            None,
            Some(login_body(None, &admin, &format!("wrong {i}"))),
            |_| {},
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{i}: {r:?}");
        assert_eq!(r.code(), "client_certificate_required");
        // A body naming a tenant is a tenant sign-in: it never reaches the platform account.
        let r = send(
            &router,
            Method::POST,
            "/v1/auth/login",
            None,
            None,
            Some(login_body(
                Some("not-a-tenant"),
                &admin,
                &format!("wrong {i}"),
            )),
            |_| {},
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}: {r:?}");
    }
    assert_eq!(core.verifications.count(CredentialKind::Password), 12);
    let keys = app.raw_strings("SELECT key FROM login_throttle").await;
    assert!(keys.iter().all(|k| k.starts_with("ip:")), "{keys:?}");
    // With the certificate, the platform admin signs in: nothing was held against it.
    let r = send(
        &router,
        Method::POST,
        "/v1/auth/login",
        None,
        None,
        Some(login_body(None, &admin, PASSWORD)),
        with_cert,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body["access_token"].is_string());
}

// ---------------------------------------------------------------------------------------------
// Item 11.

async fn put_policy(app: &TestApp, token: &str, patch: Value) -> Resp {
    let current = app.get("/v1/security/policy", token).await;
    assert_eq!(current.status, StatusCode::OK, "{current:?}");
    let mut body = current.body.clone();
    for (k, v) in patch.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.request(Method::PUT, "/v1/security/policy", Some(token), Some(body))
        .await
}

/// The staff allow-list holds on every request and on refresh, not only at sign-in; customers
/// are not confined.
async fn the_staff_allow_list_applies_to_every_request_and_refresh(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "fenced").await;
    let (_, cashier_email) = app.user(&t, &["CASHIER"]).await;
    let (_, customer_email) = app.user(&t, &["CUSTOMER"]).await;
    let cashier = app.login(Some("fenced"), &cashier_email, PASSWORD).await;
    let customer = app.token(Some("fenced"), &customer_email).await;
    let access = cashier.body["access_token"].as_str().unwrap().to_owned();
    let refresh = cashier.body["refresh_token"].as_str().unwrap().to_owned();
    // The test client is 203.0.113.7; the proxied router below speaks for 198.51.100.20.
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "allowed_ips": ["203.0.113.0/24"], "staff_login_ip_allowlist": true }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let (_, elsewhere) = app.instance_with(&[("trusted_proxies", PROXY)]).await;
    let outside = Some("198.51.100.20");

    assert_eq!(app.get("/v1/me", &access).await.status, StatusCode::OK);
    let r = send(
        &elsewhere,
        Method::GET,
        "/v1/me",
        Some(&access),
        outside,
        None,
        |_| {},
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "ip_not_allowed");
    let r = send(
        &elsewhere,
        Method::POST,
        "/v1/auth/refresh",
        None,
        outside,
        Some(json!({ "refresh_token": refresh })),
        |_| {},
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "ip_not_allowed");
    // The refused refresh did not spend the token: its owner refreshes from inside.
    let r = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": refresh }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // A customer is not confined.
    let r = send(
        &elsewhere,
        Method::GET,
        "/v1/me",
        Some(&customer),
        outside,
        None,
        |_| {},
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // Every refusal is a security event.
    let refused = app
        .raw_strings(&format!(
            "SELECT reason FROM audit_events WHERE chain = '{}' AND security_event = 'ip_refused'",
            t.id
        ))
        .await;
    assert_eq!(refused, vec!["staff_allow_list"; 2], "{refused:?}");
    // A list that would shut out the manager changing it is refused.
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "allowed_ips": ["198.51.100.0/24"], "staff_login_ip_allowlist": true }),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "allow_list_excludes_caller");
}

/// Narrowing the list ends the staff sessions whose last address it no longer admits.
async fn narrowing_the_allow_list_ends_sessions_last_seen_outside_it(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "fenced").await;
    let (_, stays) = app.user_token(&t, &["CASHIER"]).await;
    let (_, roams) = app.user_token(&t, &["CASHIER"]).await;
    let (_, customer) = app.user_token(&t, &["CUSTOMER"]).await;
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "allowed_ips": ["203.0.113.0/24", "198.51.100.0/24"],
                "staff_login_ip_allowlist": true }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // One cashier (and the customer) is next seen from 198.51.100.20, still allowed.
    let (_, proxied) = app.instance_with(&[("trusted_proxies", PROXY)]).await;
    for token in [&roams, &customer] {
        let r = send(
            &proxied,
            Method::GET,
            "/v1/me",
            Some(token),
            Some("198.51.100.20"),
            None,
            |_| {},
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    // The list narrows to the office.
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "allowed_ips": ["203.0.113.0/24"], "staff_login_ip_allowlist": true }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // Its session is over, even from an allowed address; the others go on.
    let r = app.get("/v1/me", &roams).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert_eq!(app.get("/v1/me", &stays).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/me", &customer).await.status, StatusCode::OK);
    assert_eq!(
        app.get("/v1/me", &t.manager_token).await.status,
        StatusCode::OK
    );
    let reasons = app
        .raw_strings("SELECT revoked_reason FROM sessions WHERE revoked_at IS NOT NULL")
        .await;
    assert_eq!(reasons, vec!["ip_not_allowed"], "{reasons:?}");
    let audited = app
        .raw_strings(&format!(
            "SELECT reason FROM audit_events WHERE chain = '{}' AND action = 'session.revoke'",
            t.id
        ))
        .await;
    assert_eq!(audited, vec!["ip_not_allowed"]);
}

backend_tests!(
    concurrent_wrong_passwords_on_two_instances_check_at_most_the_limit,
    concurrent_wrong_passwords_through_the_redis_limiter_check_at_most_the_limit,
    with_redis_unreachable_the_database_counts_guesses,
    concurrent_step_ups_and_password_changes_share_the_limit,
    concurrent_codes_against_one_challenge_check_at_most_the_cap,
    unknown_tenant_guesses_count_against_the_address_only,
    platform_sign_in_needs_the_certificate_before_anything_is_counted,
    the_staff_allow_list_applies_to_every_request_and_refresh,
    narrowing_the_allow_list_ends_sessions_last_seen_outside_it,
);
