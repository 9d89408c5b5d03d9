//! Issue 13, items 4 and 7: every action that can grant access needs step-up and no API token
//! can do it; enrolling a second factor needs a recent authentication and ends the user's other
//! sessions; a user manager can reset another user's second factor.

use axum::http::StatusCode;
use serde_json::json;

use crate::backend_tests;
use crate::mfa::{code_now, enable_mfa};
use crate::support::{PASSWORD, TestApp};

async fn mfa_flag(app: &TestApp, user: &str) -> String {
    app.raw_strings(&format!(
        "SELECT CAST(mfa_enabled AS TEXT) FROM users WHERE id = '{user}'"
    ))
    .await[0]
        .clone()
}

async fn step_up(app: &TestApp, token: &str) {
    let r = app
        .post(
            "/v1/auth/step-up",
            Some(token),
            json!({ "password": PASSWORD }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn granting_access_needs_step_up_and_no_api_token_can_do_it(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (user, email) = app.user(&t, &["CASHIER"]).await;
    let (mfa_user, mfa_token) = app.user_token(&t, &["AGENT"]).await;
    enable_mfa(app, &mfa_token).await;
    let r = app
        .post(
            &format!("/v1/users/{user}/disable"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    for _ in 0..12 {
        app.login(Some(&t.slug), &email, "wrong password entirely")
            .await;
    }
    let api = app
        .post(
            "/v1/api-tokens",
            Some(&t.manager_token),
            json!({ "name": "ops", "scopes": ["users:write", "users:read"], "expires_in": "30d" }),
        )
        .await;
    assert_eq!(api.status, StatusCode::CREATED, "{api:?}");
    let api = api.body["secret"].as_str().unwrap().to_owned();

    // A stale session (eleven minutes after sign-in) and an API token: refused for each.
    app.clock.advance_seconds(660);
    let actions = [
        format!("/v1/users/{user}/enable"),
        format!("/v1/users/{user}/unlock"),
        format!("/v1/users/{mfa_user}/mfa/reset"),
    ];
    for path in &actions {
        for token in [&t.manager_token, &api] {
            let r = app.post(path, Some(token), json!({})).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {r:?}");
            assert_eq!(r.code(), "step_up_required", "{path}: {r:?}");
        }
    }
    // Nothing changed: the user is still disabled and the second factor still on.
    let u = app
        .get(&format!("/v1/users/{user}"), &t.manager_token)
        .await;
    assert_eq!(u.body["status"], "disabled", "{u:?}");
    assert_eq!(mfa_flag(app, &mfa_user).await, "1");

    // After stepping up, each works.
    step_up(app, &t.manager_token).await;
    for path in &actions {
        let r = app.post(path, Some(&t.manager_token), json!({})).await;
        assert!(r.status.is_success(), "{path}: {r:?}");
    }
    let u = app
        .get(&format!("/v1/users/{user}"), &t.manager_token)
        .await;
    assert_eq!(u.body["status"], "active", "{u:?}");
    // The reset user's factor is gone, their session ended, and the reset is a security event.
    assert_eq!(mfa_flag(app, &mfa_user).await, "0");
    assert_eq!(
        app.get("/v1/me", &mfa_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        app.audit_chain(&t.id)
            .await
            .iter()
            .any(|e| e.action == "user.mfa.reset"
                && e.security_event.as_deref() == Some("mfa_reset"))
    );
}

async fn enrolling_a_second_factor_needs_a_fresh_sign_in_and_ends_other_sessions(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let owner = app.token(Some(&t.slug), &email).await;
    // A thief's copy of a session (a stolen access token) that is no longer fresh.
    let thief = app.token(Some(&t.slug), &email).await;
    app.clock.advance_seconds(660);
    let r = app.post("/v1/me/mfa/totp", Some(&thief), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "step_up_required");
    // The owner re-authenticates and enrols: every other session ends.
    step_up(app, &owner).await;
    let r = app.post("/v1/me/mfa/totp", Some(&owner), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let r = app
        .post(
            "/v1/me/mfa/totp/confirm",
            Some(&owner),
            json!({ "code": code_now(app, &secret) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        app.get("/v1/me", &thief).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get("/v1/me", &owner).await.status, StatusCode::OK);
}

backend_tests!(
    granting_access_needs_step_up_and_no_api_token_can_do_it,
    enrolling_a_second_factor_needs_a_fresh_sign_in_and_ends_other_sessions,
);
