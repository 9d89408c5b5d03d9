//! Account security a user relies on: step-up before sensitive actions, the sessions they can
//! see and end, idle and absolute session lifetimes, the tenant's security policy and its
//! bounds, throttling across accounts, staff sign-in allow-lists, and the security-event feed.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::support::{PASSWORD, Resp, TestApp};

async fn policy(app: &TestApp, token: &str) -> Value {
    let r = app.get("/v1/security/policy", token).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.body
}

async fn put_policy(app: &TestApp, token: &str, changes: Value) -> Resp {
    let mut p = policy(app, token).await;
    for (k, v) in changes.as_object().unwrap() {
        p[k] = v.clone();
    }
    app.request(Method::PUT, "/v1/security/policy", Some(token), Some(p))
        .await
}

async fn events(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/security-events?limit=100{query}"), token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.body["data"].as_array().unwrap().clone()
}

async fn set_roles(app: &TestApp, token: &str, user: &str, roles: &[&str]) -> Resp {
    app.request(
        Method::PUT,
        &format!("/v1/users/{user}/roles"),
        Some(token),
        Some(json!({ "roles": roles })),
    )
    .await
}

async fn step_up(app: &TestApp, token: &str, password: &str) -> Resp {
    app.post(
        "/v1/auth/step-up",
        Some(token),
        json!({ "password": password }),
    )
    .await
}

async fn sensitive_actions_need_a_recent_authentication(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (cashier, _) = app.user(&t, &["CASHIER"]).await;
    // Just signed in: fresh enough.
    let r = set_roles(app, &t.manager_token, &cashier, &["AGENT"]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    // Eleven minutes later (the session kept alive), a role change needs step-up.
    app.clock.advance_seconds(11 * 60);
    let r = set_roles(app, &t.manager_token, &cashier, &["CASHIER"]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "step_up_required");
    let user = app
        .get(&format!("/v1/users/{cashier}"), &t.manager_token)
        .await;
    assert_eq!(user.body["roles"], json!(["AGENT"]), "nothing changed");

    // A wrong password does not step up, and is a security event.
    let r = step_up(app, &t.manager_token, "not the password at all").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert_eq!(r.code(), "invalid_credentials");
    let r = step_up(app, &t.manager_token, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["object"], "step_up");
    let r = set_roles(app, &t.manager_token, &cashier, &["CASHIER"]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    let kinds: Vec<String> = events(app, &t.manager_token, "")
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.contains(&"step_up_required".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"step_up_failed".to_owned()), "{kinds:?}");
    let me = app.get("/v1/me", &t.manager_token).await;
    assert!(me.body["authenticated_at"].is_string(), "{me:?}");
}

async fn large_transfers_need_step_up(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "step_up_transfer_threshold": { "USD": 100_000 } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // The policy applies to credentials read after it changed: sign in again.
    let token = app.token(Some("acme"), "manager@acme.test").await;
    let open = |token: String| async move {
        let c = app.post("/v1/customers", Some(&token), json!({})).await;
        assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
        let a = app
            .post(
                "/v1/accounts",
                Some(&token),
                json!({ "customer_id": c.body["id"], "currency": "USD" }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        a.body["id"].as_str().unwrap().to_owned()
    };
    let from = open(token.clone()).await;
    let to = open(token.clone()).await;
    let dep = app
        .post(
            "/v1/deposits",
            Some(&token),
            json!({ "account_id": from, "amount": 500_000, "currency": "USD" }),
        )
        .await;
    assert_eq!(dep.status, StatusCode::CREATED, "{dep:?}");
    let transfer = |amount: i64| {
        let (token, from, to) = (token.clone(), from.clone(), to.clone());
        async move {
            app.post(
                "/v1/transfers",
                Some(&token),
                json!({ "debit_account_id": from, "credit_account_id": to, "amount": amount, "currency": "USD" }),
            )
            .await
        }
    };
    app.clock.advance_seconds(11 * 60);
    let small = transfer(100_000).await;
    assert_eq!(
        small.status,
        StatusCode::CREATED,
        "at the threshold: {small:?}"
    );
    let large = transfer(100_001).await;
    assert_eq!(large.status, StatusCode::FORBIDDEN, "{large:?}");
    assert_eq!(large.code(), "step_up_required");
    assert_eq!(step_up(app, &token, PASSWORD).await.status, StatusCode::OK);
    let large = transfer(100_001).await;
    assert_eq!(large.status, StatusCode::CREATED, "{large:?}");
    let acc = app.get(&format!("/v1/accounts/{from}"), &token).await;
    assert_eq!(
        acc.body["posted_balance"],
        json!(500_000 - 200_001),
        "{acc:?}"
    );
}

async fn login_from(app: &TestApp, slug: &str, email: &str, agent: &str) -> Value {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/login")
        .header("content-type", "application/json")
        .header("user-agent", agent)
        .body(Body::from(
            json!({ "tenant": slug, "email": email, "password": PASSWORD }).to_string(),
        ))
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.body
}

async fn users_see_and_end_their_sessions(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let laptop = login_from(app, "acme", &email, "Laptop/1.0").await;
    let phone = login_from(app, "acme", &email, "Phone/2.0").await;
    let tablet = login_from(app, "acme", &email, "Tablet/3.0").await;
    let (laptop_at, phone_at, tablet_at) = (
        laptop["access_token"].as_str().unwrap(),
        phone["access_token"].as_str().unwrap(),
        tablet["access_token"].as_str().unwrap(),
    );

    let list = app.get("/v1/me/sessions", laptop_at).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    let data = list.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{list:?}");
    let current: Vec<&Value> = data.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["user_agent"], "Laptop/1.0");
    assert_eq!(current[0]["ip"], "203.0.113.7");
    for field in [
        "created_at",
        "last_used_at",
        "expires_at",
        "authenticated_at",
    ] {
        assert!(current[0][field].is_string(), "{field}");
    }
    let phone_id = data
        .iter()
        .find(|s| s["user_agent"] == "Phone/2.0")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Ending the phone's session stops its token at once, and its refresh token.
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/me/sessions/{phone_id}"),
            Some(laptop_at),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(
        app.get("/v1/me", phone_at).await.status,
        StatusCode::UNAUTHORIZED
    );
    let refresh = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": phone["refresh_token"] }),
        )
        .await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED);
    // Someone else's session is not found, whoever asks.
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/me/sessions/{phone_id}"),
            Some(&t.manager_token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    let r = app
        .request(
            Method::DELETE,
            "/v1/me/sessions/nonsense",
            Some(laptop_at),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Revoke all others: the tablet stops, the laptop carries on.
    let r = app
        .post("/v1/me/sessions/revoke-others", Some(laptop_at), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["revoked"], 1);
    assert_eq!(
        app.get("/v1/me", tablet_at).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get("/v1/me", laptop_at).await.status, StatusCode::OK);
    let list = app.get("/v1/me/sessions", laptop_at).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
}

/// A transaction that keeps every writer of `sessions` waiting while readers go on: on SQLite
/// the database's write lock (`BEGIN IMMEDIATE`, as the ledger writer takes it), on PostgreSQL
/// a SHARE lock on the table. Released (rolled back) by [`SessionWriteLock::release`].
enum SessionWriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl SessionWriteLock {
    async fn hold(app: &TestApp) -> Self {
        use sqlx::Connection;
        match app.backend {
            crate::support::Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&app.database_url)
                    .await
                    .unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Self::Sqlite(c)
            }
            crate::support::Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&app.database_url)
                    .await
                    .unwrap();
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query("LOCK TABLE sessions IN SHARE MODE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Self::Postgres(c)
            }
        }
    }

    async fn release(self) {
        match self {
            Self::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
            Self::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
        }
    }
}

/// Use of a session restarts its idle timeout, but is written at most once a minute: requests
/// in between change nothing, so they never wait for the database's write lock (on SQLite the
/// ledger writer holds it almost continuously under load; a write per request once cut single
/// transfers to a sixth).
async fn a_session_in_use_is_written_at_most_once_a_minute(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (user_id, email) = app.user(&t, &["CASHIER"]).await;
    let at = app.token(Some("acme"), &email).await;
    let last_used = || async {
        app.raw_strings(&format!(
            "SELECT CAST(last_used_at AS TEXT) FROM sessions WHERE user_id = '{user_id}'"
        ))
        .await
    };
    assert_eq!(app.get("/v1/me", &at).await.status, StatusCode::OK);
    let first = last_used().await;
    assert_eq!(
        first,
        vec![app.clock_now().as_micros().to_string()],
        "first use recorded"
    );

    app.clock.advance_seconds(30);
    let lock = SessionWriteLock::hold(app).await;
    for _ in 0..3 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), app.get("/v1/me", &at))
            .await
            .expect("answered while a writer holds the lock: the request wrote nothing");
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    lock.release().await;
    assert_eq!(last_used().await, first, "not written within the minute");

    app.clock.advance_seconds(31);
    assert_eq!(app.get("/v1/me", &at).await.status, StatusCode::OK);
    assert_eq!(
        last_used().await,
        vec![app.clock_now().as_micros().to_string()],
        "use after the minute is recorded (the idle timeout restarts)"
    );
}

async fn idle_and_absolute_lifetimes_follow_the_tenant_policy(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "session_idle_timeout_seconds": 600, "session_absolute_lifetime_seconds": 3600 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let login = app.login(Some("acme"), &email, PASSWORD).await;
    let at = login.body["access_token"].as_str().unwrap();
    assert_eq!(login.body["refresh_expires_in"], 3600, "{login:?}");

    // Used every nine minutes, the session lives on; ten idle minutes end it.
    for _ in 0..3 {
        app.clock.advance_seconds(9 * 60);
        assert_eq!(app.get("/v1/me", at).await.status, StatusCode::OK);
    }
    app.clock.advance_seconds(10 * 60);
    let idle = app.get("/v1/me", at).await;
    assert_eq!(idle.status, StatusCode::UNAUTHORIZED, "{idle:?}");
    let refresh = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": login.body["refresh_token"] }),
        )
        .await;
    assert_eq!(
        refresh.status,
        StatusCode::UNAUTHORIZED,
        "idle sessions do not refresh"
    );

    // However busy, a session ends at its absolute lifetime.
    let login = app.login(Some("acme"), &email, PASSWORD).await;
    let mut rt = login.body["refresh_token"].as_str().unwrap().to_owned();
    for _ in 0..6 {
        app.clock.advance_seconds(9 * 60);
        let r = app
            .post("/v1/auth/refresh", None, json!({ "refresh_token": rt }))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        rt = r.body["refresh_token"].as_str().unwrap().to_owned();
    }
    app.clock.advance_seconds(7 * 60);
    let r = app
        .post("/v1/auth/refresh", None, json!({ "refresh_token": rt }))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "past an hour: {r:?}");
}

async fn the_policy_stays_within_its_bounds(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let p = policy(app, &t.manager_token).await;
    assert_eq!(p["password_min_length"], 12);
    assert_eq!(p["lockout_threshold"], 10);
    assert_eq!(p["lockout_minutes"], 30);
    assert_eq!(p["step_up_max_age_seconds"], 600);

    for (field, value) in [
        ("lockout_threshold", json!(11)),
        ("lockout_minutes", json!(10)),
        ("password_min_length", json!(6)),
        ("password_history", json!(2)),
        ("step_up_max_age_seconds", json!(3600)),
    ] {
        let r = put_policy(app, &t.manager_token, json!({ field: value })).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {r:?}");
        assert_eq!(r.body["error"]["param"], field, "{r:?}");
    }
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "allowed_ips": ["10.0.0.0/33"] }),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["param"], "allowed_ips[0]");
    let r = put_policy(app, &t.manager_token, json!({ "surprise": true })).await;
    assert_eq!(r.code(), "parameter_unknown");
    assert_eq!(policy(app, &t.manager_token).await, p, "nothing changed");

    // Only a manager configures it; an auditor reads it; a cashier neither.
    let (_, auditor) = app.user_token(&t, &["AUDITOR"]).await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    assert_eq!(policy(app, &auditor).await, p);
    let r = put_policy(app, &auditor, json!({ "lockout_threshold": 5 })).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/v1/security/policy", &cashier).await.status,
        StatusCode::FORBIDDEN
    );
    let r = put_policy(app, &t.manager_token, json!({ "lockout_threshold": 5 })).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(policy(app, &auditor).await["lockout_threshold"], 5);
    assert!(
        app.audit_chain(&t.id)
            .await
            .iter()
            .any(|e| e.action == "security.policy.update" && e.outcome == "success")
    );
}

async fn one_address_failing_across_accounts_is_throttled(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    // The configured budget is 5 failures per address (below).
    for i in 0..5 {
        let r = app
            .login(
                Some("acme"),
                &format!("nobody{i}@acme.test"),
                "wrong password!!",
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}: {r:?}");
    }
    // Now even a correct password from that address waits.
    let r = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "too_many_attempts");
    assert!(r.headers.get("retry-after").is_some());
    // Another address is not affected.
    let other = app.second_instance().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({ "tenant": "acme", "email": "manager@acme.test", "password": PASSWORD })
                .to_string(),
        ))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(other, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let throttled = events(app, &t.manager_token, "&type=login_throttled").await;
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert_eq!(throttled[0]["severity"], "high");
    // After the window, the address may try again.
    app.clock.advance_seconds(901);
    let r = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn staff_sign_in_can_be_confined_to_the_allow_list(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, customer) = app.user(&t, &["CUSTOMER"]).await;
    let (_, cashier) = app.user(&t, &["CASHIER"]).await;
    // The manager works from 203.0.113.7 (the list applies to its own requests too, so it
    // must admit them); the second instance's client is 203.0.113.8.
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "allowed_ips": ["203.0.113.7/32"], "staff_login_ip_allowlist": true }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let other = app.second_instance().await;
    let login = |email: &str| {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/auth/login")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({ "tenant": "acme", "email": email, "password": PASSWORD }).to_string(),
            ))
            .unwrap();
        tower::ServiceExt::oneshot(other.clone(), req)
    };
    // From 203.0.113.8: staff are refused, customers are not.
    let r = login(&cashier).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "ip_not_allowed", "{body}");
    assert!(body.get("access_token").is_none());
    let r = login(&customer).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let refused = events(app, &t.manager_token, "&type=ip_refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["audit_event"]["ip"], "203.0.113.8");
}

async fn security_events_are_typed_filtered_and_chained(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (cashier_id, cashier) = app.user_token(&t, &["CASHIER"]).await;
    // A failed sign-in, a refused authorisation and a forged token.
    app.login(Some("acme"), "manager@acme.test", "not the password at all")
        .await;
    assert_eq!(
        app.get("/v1/audit-events", &cashier).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/v1/me", "eyJhbGciOiJub25lIn0.e30.").await.status,
        StatusCode::UNAUTHORIZED
    );

    let all = events(app, &t.manager_token, "").await;
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"login_failed"), "{kinds:?}");
    assert!(kinds.contains(&"authorization_refused"), "{kinds:?}");
    for e in &all {
        assert_eq!(e["object"], "security_event");
        assert_eq!(e["audit_event"]["security_event"], e["type"]);
    }
    let refused = events(app, &t.manager_token, &format!("&actor_id={cashier_id}")).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["type"], "authorization_refused");
    assert_eq!(refused[0]["audit_event"]["reason"], "audit:read");
    assert_eq!(refused[0]["severity"], "medium");
    let low = events(app, &t.manager_token, "&type=login_failed").await;
    assert!(low.iter().all(|e| e["type"] == "login_failed"));
    let high = events(app, &t.manager_token, "&severity=high").await;
    assert!(high.is_empty(), "{high:?}");
    let r = app
        .get("/v1/security-events?type=bogus", &t.manager_token)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["param"], "type");
    // A forged token carries no tenant: it is on the platform's feed.
    let platform = events(app, &admin, "&type=token_rejected").await;
    assert!(!platform.is_empty());
    // A cashier does not read the feed.
    assert_eq!(
        app.get("/v1/security-events", &cashier).await.status,
        StatusCode::FORBIDDEN
    );
    // Every event is an audit record of the chain, which still verifies.
    let chain = app.audit_chain(&t.id).await;
    for e in &all {
        assert!(chain.iter().any(|r| r.id == e["audit_event"]["id"]));
    }
    kasho::service::audit::verify_all(app.core.store.as_ref(), &app.core.sealer, |_| {}, |_| {})
        .await
        .expect("the chains verify with security events in them");
}

async fn unlocking_forgets_failures(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (cashier_id, email) = app.user(&t, &["CASHIER"]).await;
    let r = put_policy(app, &t.manager_token, json!({ "lockout_threshold": 3 })).await;
    assert_eq!(r.status, StatusCode::OK);
    for i in 0..3 {
        let r = app.login(Some("acme"), &email, "wrong password!!").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}: {r:?}");
        app.clock.advance_seconds(2);
    }
    let r = app.login(Some("acme"), &email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "account_locked");
    let locked = events(app, &t.manager_token, "&type=account_locked").await;
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0]["audit_event"]["target_id"], json!(cashier_id));

    let (_, auditor) = app.user_token(&t, &["AUDITOR"]).await;
    let r = app
        .post(
            &format!("/v1/users/{cashier_id}/unlock"),
            Some(&auditor),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .post(
            &format!("/v1/users/{cashier_id}/unlock"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["was_locked"], true);
    let r = app.login(Some("acme"), &email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

/// Failure counters are not kept forever: a day after the last failure (and any lock) ends,
/// the retention job deletes them, and nothing about sign-in changes.
async fn retention_forgets_quiet_failure_counters(app: &TestApp) {
    let admin = app.platform_admin().await;
    let _t = app.tenant(&admin, "acme").await;
    let r = app
        .login(Some("acme"), "nobody@acme.test", "wrong password!!")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let rows = || async {
        app.raw_strings("SELECT key FROM login_throttle")
            .await
            .len()
    };
    assert_eq!(rows().await, 2, "the email's and the address's counters");
    let now = app.clock_now();
    let report = kasho::service::retention::run_once(&app.core, now)
        .await
        .unwrap();
    assert_eq!(report.counts.login_throttle, 0, "recent: kept");
    app.clock.advance_seconds(86_400 + 1);
    let report = kasho::service::retention::run_once(&app.core, app.clock_now())
        .await
        .unwrap();
    assert_eq!(report.counts.login_throttle, 2, "{report:?}");
    assert_eq!(rows().await, 0);
}

/// When a tenant starts requiring MFA of a role, the API tokens of its members who have not
/// enrolled stop acting too: a token is no way around the enrolment gate.
async fn a_policy_requiring_mfa_also_gates_the_tokens_of_unenrolled_users(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = app
        .post(
            "/v1/api-tokens",
            Some(&t.manager_token),
            json!({ "name": "reports", "scopes": ["accounts:read"], "expires_in": "30d", "allowed_ips": [] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get("/v1/accounts", &secret).await.status,
        StatusCode::OK
    );
    let r = put_policy(
        app,
        &t.manager_token,
        json!({ "mfa_required_roles": ["MANAGER"] }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app.get("/v1/accounts", &secret).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "mfa_enrolment_required");
}

crate::backend_tests!(
    a_policy_requiring_mfa_also_gates_the_tokens_of_unenrolled_users,
    retention_forgets_quiet_failure_counters,
    sensitive_actions_need_a_recent_authentication,
    large_transfers_need_step_up,
    users_see_and_end_their_sessions,
    idle_and_absolute_lifetimes_follow_the_tenant_policy,
    a_session_in_use_is_written_at_most_once_a_minute,
    the_policy_stays_within_its_bounds,
    staff_sign_in_can_be_confined_to_the_allow_list,
    security_events_are_typed_filtered_and_chained,
    unlocking_forgets_failures,
);

mod throttled {
    use super::*;
    use crate::support::Backend;

    async fn run(backend: Backend) {
        let app = TestApp::with_config(backend, &[("login_ip_max_failures", "5")]).await;
        one_address_failing_across_accounts_is_throttled(&app).await;
        app.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_one_address_failing_across_accounts_is_throttled() {
        run(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_one_address_failing_across_accounts_is_throttled() {
        run(Backend::Postgres).await;
    }
}
