//! The password policy wherever a password is set (accepting an invitation, also a tenant's
//! first manager's, the change route), and `POST /v1/me/password`: step-up, the current password, history, and
//! the other sessions ending.

use axum::http::StatusCode;
use kasho::domain::security::SecurityPolicy;
use kasho::ids::TenantId;
use serde_json::json;

use crate::backend_tests;
use crate::support::{PASSWORD, TenantFixture, TestApp};

/// Passphrases the policy accepts (long, uncommon, nothing personal).
const STRONG: [&str; 6] = [
    "vivid otter climbs amber staircase",
    "marmalade cobalt whisper tundra",
    "plinth saffron geyser mosaic",
    "ember walrus tango quiver",
    "velvet dynamo kestrel fjord",
    "Tr4vel-Quokka-Lantern-9",
];

async fn status_of(app: &TestApp, email: &str) -> Vec<String> {
    app.raw_strings(&format!("SELECT status FROM users WHERE email = '{email}'"))
        .await
}

/// Invites a CASHIER at `email` (or sends the invited user a new link) and accepts the
/// invitation choosing `password`: where a password is first set.
async fn create_user(
    app: &TestApp,
    t: &TenantFixture,
    email: &str,
    password: &str,
) -> crate::support::Resp {
    let r = app
        .post_stepping_up(
            "/v1/users",
            &t.manager_token,
            json!({ "email": email, "roles": ["CASHIER"] }),
        )
        .await;
    if r.code() == "email_taken" {
        let id = app
            .raw_strings(&format!("SELECT id FROM users WHERE email = '{email}'"))
            .await;
        let again = app
            .post_stepping_up(
                &format!("/v1/users/{}/reinvite", id[0]),
                &t.manager_token,
                json!({}),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK, "{again:?}");
    } else {
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
    app.accept_invitation(email, password).await
}

async fn weak_passwords_are_refused_at_user_creation_naming_the_rule(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "orchid").await;
    let email = "grace.hopper@orchid.test";
    let cases = [
        ("short pass", "password_too_short"),
        (&"w".repeat(129) as &str, "password_too_long"),
        ("Password123456!", "password_too_common"),
        ("qwertyuiop123", "password_too_common"),
        ("  iloveyou2026  ", "password_too_common"),
        (
            "grace hopper forever 1906",
            "password_contains_personal_info",
        ),
        ("GraceHopper!!2026", "password_contains_personal_info"),
        (
            "orchid ltd treasury desk",
            "password_contains_personal_info",
        ),
        ("aaaaaaaaaaaaaaaa", "password_too_weak"),
        ("abcdefghijklmnop", "password_too_weak"),
    ];
    for (password, code) in cases {
        let r = create_user(app, &t, email, password).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{password}: {r:?}");
        assert_eq!(r.code(), code, "{password}: {r:?}");
        assert_eq!(r.body["error"]["param"], "password", "{r:?}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
        assert!(
            !message.contains(password.trim()),
            "echoes the password: {message}"
        );
        assert_eq!(
            status_of(app, email).await,
            vec!["invited"],
            "{password} activated the user"
        );
    }
    // zxcvbn's advice is the message of a weak one.
    let r = create_user(app, &t, email, "aaaaaaaaaaaaaaaa").await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("is too easy to guess: "),
        "{r:?}"
    );
    for (i, password) in STRONG.iter().enumerate() {
        let r = create_user(app, &t, &format!("strong{i}@orchid.test"), password).await;
        assert_eq!(r.status, StatusCode::OK, "{password}: {r:?}");
        let login = app
            .login(Some("orchid"), &format!("strong{i}@orchid.test"), password)
            .await;
        assert_eq!(login.status, StatusCode::OK, "{login:?}");
    }
}

async fn a_new_tenants_first_manager_gets_the_same_policy(app: &TestApp) {
    let admin = app.platform_admin().await;
    let r = app
        .post(
            "/v1/tenants",
            Some(&admin),
            json!({
                "slug": "lumen", "name": "Lumen Payments", "currencies": ["USD"],
                "manager": { "email": "ops@lumen.test" }
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    // The manager chooses its password through its invitation: the tenant's name and slug
    // are personal information there too.
    let token = app.invitation_token("ops@lumen.test").await;
    for (password, code) in [
        ("lumen payments 2026!", "password_contains_personal_info"),
        ("Password123456!", "password_too_common"),
        ("shortpass", "password_too_short"),
    ] {
        let r = app
            .post(
                "/v1/invitations/accept",
                None,
                json!({ "token": token, "password": password }),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
        assert_eq!(r.code(), code, "{r:?}");
        assert_eq!(r.body["error"]["param"], "password", "{r:?}");
    }
    // A refused password leaves the link usable.
    let r = app
        .post(
            "/v1/invitations/accept",
            None,
            json!({ "token": token, "password": STRONG[0] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        app.login(Some("lumen"), "ops@lumen.test", STRONG[0])
            .await
            .status,
        StatusCode::OK
    );
}

async fn a_tenant_policy_sets_its_own_minimum_length(app: &TestApp) {
    let admin = app.platform_admin().await;
    let strict = app.tenant(&admin, "strict").await;
    let relaxed = app.tenant(&admin, "relaxed").await;
    // The configured default (no MFA requirement in the harness) with a longer minimum.
    let policy = SecurityPolicy {
        password_min_length: 16,
        ..app.core.settings.default_policy.clone()
    };
    app.core
        .store
        .put_security_policy(
            &TenantId::parse(&strict.id).unwrap(),
            &serde_json::to_string(&policy).unwrap(),
            &strict.manager_id,
            app.clock_now(),
            &[],
        )
        .await
        .unwrap();
    // 14 characters, random: strong, but shorter than the strict tenant allows.
    let fourteen = "xK7#mP2$vL9@qR";
    let r = create_user(app, &strict, "a@strict.test", fourteen).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "password_too_short");
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("16"),
        "{r:?}"
    );
    let r = create_user(app, &relaxed, "a@relaxed.test", fourteen).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = create_user(app, &strict, "a@strict.test", &format!("{fourteen}!w")).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn change(app: &TestApp, token: &str, current: &str, new: &str) -> crate::support::Resp {
    app.post(
        "/v1/me/password",
        Some(token),
        json!({ "current_password": current, "new_password": new }),
    )
    .await
}

async fn changing_the_password_ends_the_other_sessions_and_keeps_this_one(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "orchid").await;
    let (user_id, email) = app.user(&t, &["CASHIER"]).await;
    let here = app.token(Some("orchid"), &email).await;
    let elsewhere = app.token(Some("orchid"), &email).await;

    let r = change(app, &here, PASSWORD, STRONG[0]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(app.get("/v1/me", &here).await.status, StatusCode::OK);
    let gone = app.get("/v1/me", &elsewhere).await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED, "{gone:?}");
    // The old password no longer signs in; the new one does.
    let old = app.login(Some("orchid"), &email, PASSWORD).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{old:?}");
    let new = app.login(Some("orchid"), &email, STRONG[0]).await;
    assert_eq!(new.status, StatusCode::OK, "{new:?}");
    // Audited in the tenant's chain, naming the user, never carrying the password.
    let chain = app.audit_chain(&t.id).await;
    let ev = chain
        .iter()
        .find(|e| e.action == "user.password.change" && e.outcome == "success")
        .expect("audited");
    assert_eq!(ev.target_id.as_deref(), Some(user_id.as_str()));
    assert_eq!(ev.actor_id.as_deref(), Some(user_id.as_str()));
    let dump = format!("{chain:?}");
    assert!(!dump.contains(STRONG[0]) && !dump.contains(PASSWORD));
}

async fn changing_the_password_needs_the_current_one_and_a_valid_new_one(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "orchid").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let token = app.token(Some("orchid"), &email).await;

    let r = change(app, &token, "not my password at all", STRONG[0]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "current_password_incorrect");
    assert_eq!(r.body["error"]["param"], "current_password");
    for (new, code) in [
        ("short", "password_too_short"),
        ("Password123456!", "password_too_common"),
        ("aaaaaaaaaaaaaaaa", "password_too_weak"),
        (PASSWORD, "password_reused"),
    ] {
        let r = change(app, &token, PASSWORD, new).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{new}: {r:?}");
        assert_eq!(r.code(), code, "{new}: {r:?}");
        assert_eq!(r.body["error"]["param"], "new_password", "{r:?}");
    }
    let local = email.split('@').next().unwrap();
    let r = change(app, &token, PASSWORD, &format!("{local} is my name")).await;
    assert_eq!(r.code(), "password_contains_personal_info", "{r:?}");
    // Unknown fields are refused; nothing changed through all of this.
    let r = app
        .post(
            "/v1/me/password",
            Some(&token),
            json!({ "current_password": PASSWORD, "new_password": STRONG[1], "user_id": "usr_x" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    let still = app.login(Some("orchid"), &email, PASSWORD).await;
    assert_eq!(still.status, StatusCode::OK, "{still:?}");
}

async fn wrong_current_passwords_count_towards_the_sign_in_lockout(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "orchid").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let token = app.token(Some("orchid"), &email).await;
    for _ in 0..3 {
        let r = change(app, &token, "a wrong guess of mine", STRONG[0]).await;
        assert_eq!(r.code(), "current_password_incorrect", "{r:?}");
    }
    // Three failures: the account is now inside its progressive delay, for the change route
    // and for sign-in alike.
    let r = change(app, &token, PASSWORD, STRONG[0]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert!(r.headers.contains_key("retry-after"));
    let login = app.login(Some("orchid"), &email, PASSWORD).await;
    assert_eq!(login.status, StatusCode::TOO_MANY_REQUESTS, "{login:?}");
    let failures: Vec<String> = app
        .raw_strings(
            "SELECT reason FROM audit_events WHERE action = 'user.password.change' \
             AND security_event = 'step_up_failed'",
        )
        .await;
    assert_eq!(failures, vec!["wrong_current_password"; 3]);
    app.clock.advance_seconds(60);
    let r = change(app, &token, PASSWORD, STRONG[0]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
}

async fn changing_the_password_needs_a_recent_authentication(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "orchid").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let token = app.token(Some("orchid"), &email).await;
    // The default step-up window is 10 minutes.
    app.clock.advance_seconds(11 * 60);
    let r = change(app, &token, PASSWORD, STRONG[0]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "step_up_required");
    let still = app.login(Some("orchid"), &email, PASSWORD).await;
    assert_eq!(still.status, StatusCode::OK, "{still:?}");
    // Re-authenticating the same session makes the change possible again.
    let r = app
        .post(
            "/v1/auth/step-up",
            Some(&token),
            json!({ "password": PASSWORD }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = change(app, &token, PASSWORD, STRONG[0]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    // A fresh sign-in is a recent authentication too.
    app.clock.advance_seconds(11 * 60);
    let fresh = app.login(Some("orchid"), &email, STRONG[0]).await;
    let fresh = fresh.body["access_token"].as_str().unwrap();
    let r = change(app, fresh, STRONG[0], STRONG[1]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
}

async fn none_of_the_last_four_passwords_can_come_back(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "orchid").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let token = app.token(Some("orchid"), &email).await;
    // PASSWORD, then four changes: the current one and the four before it are remembered.
    let mut current = PASSWORD;
    for next in &STRONG[..4] {
        let r = change(app, &token, current, next).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{next}: {r:?}");
        current = next;
    }
    for old in [PASSWORD, STRONG[0], STRONG[1], STRONG[2], STRONG[3]] {
        let r = change(app, &token, current, old).await;
        assert_eq!(r.code(), "password_reused", "{old}: {r:?}");
    }
    // One more change pushes the first out of the history.
    let r = change(app, &token, current, STRONG[4]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let r = change(app, &token, STRONG[4], STRONG[0]).await;
    assert_eq!(r.code(), "password_reused", "{r:?}");
    let r = change(app, &token, STRONG[4], PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
}

backend_tests!(
    weak_passwords_are_refused_at_user_creation_naming_the_rule,
    a_new_tenants_first_manager_gets_the_same_policy,
    a_tenant_policy_sets_its_own_minimum_length,
    changing_the_password_ends_the_other_sessions_and_keeps_this_one,
    changing_the_password_needs_the_current_one_and_a_valid_new_one,
    wrong_current_passwords_count_towards_the_sign_in_lockout,
    changing_the_password_needs_a_recent_authentication,
    none_of_the_last_four_passwords_can_come_back,
);
