//! Invitations (issue 13, item 3; item 4 for inviting staff): nobody sets another person's
//! password. A user is created `invited`, gets a single-use link (256 bits, stored hashed,
//! 72 hours) by mail, and chooses its own password; a newer link replaces the older ones; the
//! console can issue one when mail cannot reach someone. Inviting staff needs step-up.

use std::process::{Command, Stdio};

use axum::http::StatusCode;
use serde_json::json;

use crate::backend_tests;
use crate::support::{PASSWORD, Resp, TenantFixture, TestApp};

const CHOSEN: &str = "copper lantern drifts over quiet fjords";

async fn invite(app: &TestApp, t: &TenantFixture, email: &str, roles: &[&str]) -> Resp {
    app.post(
        "/v1/users",
        Some(&t.manager_token),
        json!({ "email": email, "roles": roles }),
    )
    .await
}

async fn accept(app: &TestApp, token: &str, password: &str) -> Resp {
    app.post(
        "/v1/invitations/accept",
        None,
        json!({ "token": token, "password": password }),
    )
    .await
}

/// Every mail of the development mailbox (after a delivery pass), oldest first.
async fn mailbox(app: &TestApp) -> Vec<String> {
    kasho::service::mail::deliver_due(&app.core).await.unwrap();
    let dir = app.data_dir.path().join("mailbox");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "eml"));
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

fn token_in(message: &str) -> String {
    let at = message.find("#token=").expect("an invitation link") + "#token=".len();
    message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

async fn status_of(app: &TestApp, email: &str) -> String {
    app.raw_strings(&format!("SELECT status FROM users WHERE email = '{email}'"))
        .await
        .concat()
}

async fn a_user_is_invited_and_chooses_its_own_password(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    // The manager cannot choose the password any more: the field does not exist.
    let with_password = app
        .post(
            "/v1/users",
            Some(&t.manager_token),
            json!({ "email": "cora@acme.test", "password": PASSWORD, "roles": ["CASHIER"] }),
        )
        .await;
    assert_eq!(with_password.status, StatusCode::BAD_REQUEST);
    assert_eq!(with_password.code(), "parameter_unknown");
    assert_eq!(with_password.body["error"]["param"], "password");

    let r = invite(app, &t, "Cora@Acme.test", &["CASHIER"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["status"], "invited");
    assert_eq!(r.body["email"], "cora@acme.test");
    let id = r.body["id"].as_str().unwrap().to_owned();
    // Invited, nobody can sign in as it: no password anyone knows.
    let login = app.login(Some("acme"), "cora@acme.test", PASSWORD).await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{login:?}");

    let mails = mailbox(app).await;
    let mail = mails
        .iter()
        .find(|m| m.contains("To: <cora@acme.test>"))
        .expect("the invitation mail");
    assert!(
        mail.contains("Subject: You are invited to acme Ltd on Kasho"),
        "{mail}"
    );
    assert!(
        mail.contains("http://127.0.0.1:8080/accept-invitation#token="),
        "{mail}"
    );
    assert!(mail.contains("roles: CASHIER"), "{mail}");
    let token = token_in(mail);
    assert!(token.len() >= 43, "256 bits in base64url: {token}");
    // Only a digest is stored.
    let stored = app
        .raw_strings(&format!(
            "SELECT token_hash FROM user_invitations WHERE user_id = '{id}'"
        ))
        .await;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], token);
    assert!(
        !app.bytes_at_rest()
            .await
            .windows(token.len())
            .any(|w| w == token.as_bytes())
    );

    // The tenant's password policy applies; a refused password leaves the link usable.
    let weak = accept(app, &token, "short").await;
    assert_eq!(weak.status, StatusCode::BAD_REQUEST, "{weak:?}");
    assert_eq!(weak.code(), "password_too_short");
    assert_eq!(weak.body["error"]["param"], "password");
    assert_eq!(status_of(app, "cora@acme.test").await, "invited");

    let ok = accept(app, &token, CHOSEN).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body["object"], "invitation_acceptance");
    assert_eq!(ok.body["user_id"], id.as_str());
    assert_eq!(ok.body["tenant"], "acme");
    assert_eq!(ok.body["status"], "active");
    let login = app.login(Some("acme"), "cora@acme.test", CHOSEN).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");

    // Single use.
    let again = accept(app, &token, "another passphrase entirely 42").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{again:?}");
    assert_eq!(again.code(), "invitation_invalid");
    let unknown = accept(app, "not-a-real-token-at-all-0000000000000000000", CHOSEN).await;
    assert_eq!(unknown.code(), "invitation_invalid");
    assert_eq!(
        app.login(Some("acme"), "cora@acme.test", CHOSEN)
            .await
            .status,
        StatusCode::OK
    );

    let chain = app.audit_chain(&t.id).await;
    assert!(chain.iter().any(|e| e.action == "user.create"
        && e.target_id.as_deref() == Some(id.as_str())
        && e.actor_id.as_deref() == Some(t.manager_id.as_str())
        && e.reason.as_deref() == Some("invited")));
    assert!(chain.iter().any(|e| e.action == "invitation.accept"
        && e.outcome == "success"
        && e.actor_id.as_deref() == Some(id.as_str())));
    let refused: Vec<_> = chain
        .iter()
        .filter(|e| e.action == "invitation.accept" && e.outcome == "failure")
        .filter_map(|e| e.reason.clone())
        .collect();
    assert_eq!(refused, vec!["already_used"]);
}

async fn links_last_72_hours_and_a_new_invitation_replaces_the_old(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = invite(app, &t, "dan@acme.test", &["AGENT"]).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let first = app.invitation_token("dan@acme.test").await;
    app.clock.advance_seconds(72 * 3600 + 1);
    let late = accept(app, &first, CHOSEN).await;
    assert_eq!(late.code(), "invitation_invalid", "{late:?}");
    assert_eq!(status_of(app, "dan@acme.test").await, "invited");

    // A new link (the manager signs in again: its token expired meanwhile).
    let manager = app.token(Some("acme"), "manager@acme.test").await;
    let reinvite = app
        .post(
            &format!("/v1/users/{id}/reinvite"),
            Some(&manager),
            json!({}),
        )
        .await;
    assert_eq!(reinvite.status, StatusCode::OK, "{reinvite:?}");
    assert_eq!(reinvite.body["status"], "invited");
    let second = app.invitation_token("dan@acme.test").await;
    // A third one replaces the second before it expires.
    let again = app
        .post(
            &format!("/v1/users/{id}/reinvite"),
            Some(&manager),
            json!({}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    let third = app.invitation_token("dan@acme.test").await;
    assert_ne!(second, third);
    let replaced = accept(app, &second, CHOSEN).await;
    assert_eq!(replaced.code(), "invitation_invalid", "{replaced:?}");
    let ok = accept(app, &third, CHOSEN).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    // An active user is not re-invited: it resets its password instead.
    let active = app
        .post(
            &format!("/v1/users/{id}/reinvite"),
            Some(&manager),
            json!({}),
        )
        .await;
    assert_eq!(active.status, StatusCode::CONFLICT, "{active:?}");
    assert_eq!(active.code(), "user_not_invited");
    let reasons: Vec<_> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.action == "invitation.accept" && e.outcome == "failure")
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons, vec!["expired", "superseded"]);
}

async fn a_tenants_first_manager_is_invited(app: &TestApp) {
    let admin = app.platform_admin().await;
    let r = app
        .post(
            "/v1/tenants",
            Some(&admin),
            json!({ "slug": "orbit", "name": "Orbit", "currencies": ["USD"],
                    "manager": { "email": "ada@orbit.test" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(status_of(app, "ada@orbit.test").await, "invited");
    let login = app.login(Some("orbit"), "ada@orbit.test", PASSWORD).await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{login:?}");
    let mails = mailbox(app).await;
    let mail = mails
        .iter()
        .find(|m| m.contains("To: <ada@orbit.test>"))
        .expect("the manager's invitation");
    assert!(mail.contains("roles: MANAGER"), "{mail}");
    let ok = accept(app, &token_in(mail), CHOSEN).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body["tenant"], "orbit");
    let login = app.login(Some("orbit"), "ada@orbit.test", CHOSEN).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    // A platform admin's stale session cannot create a tenant (it creates a MANAGER).
    app.clock.advance_seconds(11 * 60);
    let stale = app
        .post(
            "/v1/tenants",
            Some(&admin),
            json!({ "slug": "later", "name": "Later", "currencies": ["USD"],
                    "manager": { "email": "m@later.test" } }),
        )
        .await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN, "{stale:?}");
    assert_eq!(stale.code(), "step_up_required");
}

async fn inviting_staff_needs_step_up_and_api_tokens_cannot(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    // An API token with every permission of the manager, made while the session is fresh.
    let me = app.get("/v1/me", &t.manager_token).await;
    let scopes: Vec<&str> = me.body["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let tok = app
        .post(
            "/v1/api-tokens",
            Some(&t.manager_token),
            json!({ "name": "hr", "scopes": scopes, "expires_in": "30d" }),
        )
        .await;
    assert_eq!(tok.status, StatusCode::CREATED, "{tok:?}");
    let secret = tok.body["secret"].as_str().unwrap().to_owned();
    for roles in [&["MANAGER"][..], &["CASHIER"], &["AUDITOR", "CUSTOMER"]] {
        let r = app
            .post(
                "/v1/users",
                Some(&secret),
                json!({ "email": "x@acme.test", "roles": roles }),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{roles:?}: {r:?}");
        assert_eq!(r.code(), "step_up_required", "{roles:?}");
    }
    // A customer login is no staff role: no step-up needed.
    let customer = app
        .post(
            "/v1/users",
            Some(&secret),
            json!({ "email": "cust@acme.test", "roles": ["CUSTOMER"] }),
        )
        .await;
    assert_eq!(customer.status, StatusCode::CREATED, "{customer:?}");

    // A session past the step-up window (10 minutes) is refused too, until it steps up.
    app.clock.advance_seconds(11 * 60);
    let stale = invite(app, &t, "eve@acme.test", &["MANAGER"]).await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN, "{stale:?}");
    assert_eq!(stale.code(), "step_up_required");
    assert_eq!(status_of(app, "eve@acme.test").await, "");
    let up = app
        .post(
            "/v1/auth/step-up",
            Some(&t.manager_token),
            json!({ "password": PASSWORD }),
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{up:?}");
    let fresh = invite(app, &t, "eve@acme.test", &["MANAGER"]).await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{fresh:?}");
    let reasons: Vec<_> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.security_event.as_deref() == Some("step_up_required"))
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(
        reasons,
        vec![
            "api_token_cannot_step_up",
            "api_token_cannot_step_up",
            "api_token_cannot_step_up",
            "authentication_too_old"
        ]
    );
}

async fn concurrent_acceptances_spend_a_link_once(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    invite(app, &t, "race@acme.test", &["CASHIER"]).await;
    let token = app.invitation_token("race@acme.test").await;
    let passwords: Vec<String> = (0..8).map(|i| format!("{CHOSEN} number {i}")).collect();
    let answers = app
        .send_parallel(
            passwords
                .iter()
                .map(|p| {
                    TestApp::post_request(
                        "/v1/invitations/accept",
                        None,
                        &json!({ "token": token, "password": p }),
                    )
                })
                .collect(),
        )
        .await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    for (i, r) in answers.iter().enumerate() {
        if i != winners[0] {
            assert_eq!(r.code(), "invitation_invalid", "{r:?}");
        }
    }
    let login = app
        .login(Some("acme"), "race@acme.test", &passwords[winners[0]])
        .await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
}

async fn the_console_issues_a_fresh_link_when_mail_cannot_reach_someone(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    invite(app, &t, "far@acme.test", &["AUDITOR"]).await;
    let mailed = app.invitation_token("far@acme.test").await;
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args([
            "admin",
            "invitation-link",
            "--tenant",
            "acme",
            "far@acme.test",
        ])
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error")
        .env("KASHO_ARGON2_MEMORY_KIB", "64")
        .env("KASHO_ARGON2_ITERATIONS", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run kasho");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("http://127.0.0.1:8080/accept-invitation#token="),
        "{printed}"
    );
    let console = token_in(&printed);
    // The mailed link stopped working; the console's works.
    assert_eq!(
        accept(app, &mailed, CHOSEN).await.code(),
        "invitation_invalid"
    );
    let ok = accept(app, &console, CHOSEN).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    // Audited in the tenant's chain, as a security event.
    let issued: Vec<_> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.security_event.as_deref() == Some("invitation_link_issued"))
        .collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].actor_type, "system");
    assert_eq!(issued[0].action, "user.invitation_link.issue");
    // An active user gets no link; an unknown one neither.
    for email in ["far@acme.test", "nobody@acme.test"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
            .args(["admin", "invitation-link", "--tenant", "acme", email])
            .arg("--data-dir")
            .arg(app.data_dir.path())
            .args(["--database-url", &app.database_url])
            .env("KASHO_LOG_LEVEL", "error")
            .output()
            .expect("run kasho");
        assert!(!out.status.success(), "{email}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("#token="),
            "{email}"
        );
    }
    // No API route issues links: only the console.
    let doc = app.get("/v1/openapi.json", &t.manager_token).await;
    assert!(
        !doc.body.to_string().contains("invitation-link"),
        "an API route for console links"
    );
}

/// `POST /v1/users/{id}/{action}` as the tenant's manager.
async fn user_action(app: &TestApp, t: &TenantFixture, id: &str, action: &str) -> Resp {
    app.post(
        &format!("/v1/users/{id}/{action}"),
        Some(&t.manager_token),
        json!({}),
    )
    .await
}

/// A user disabled before accepting its invitation and enabled again is `invited` again, not
/// `active`: it has no password of its own until it accepts a link.
async fn enabling_a_user_who_never_accepted_keeps_it_invited(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = invite(app, &t, "dora@acme.test", &["CASHIER"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let off = user_action(app, &t, &id, "disable").await;
    assert_eq!(off.status, StatusCode::OK, "{off:?}");
    assert_eq!(off.body["status"], "disabled");
    let on = user_action(app, &t, &id, "enable").await;
    assert_eq!(on.status, StatusCode::OK, "{on:?}");
    assert_eq!(on.body["status"], "invited", "{on:?}");
    assert_eq!(status_of(app, "dora@acme.test").await, "invited");
    // A fresh link still makes it active with a password of its own.
    let again = user_action(app, &t, &id, "reinvite").await;
    assert!(again.status.is_success(), "{again:?}");
    let mails = mailbox(app).await;
    let token = token_in(
        mails
            .iter()
            .rev()
            .find(|m| m.contains("To: <dora@acme.test>"))
            .expect("the new invitation"),
    );
    let ok = accept(app, &token, CHOSEN).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(status_of(app, "dora@acme.test").await, "active");
    // A user who had accepted comes back `active` after a disable and enable.
    let off = user_action(app, &t, &id, "disable").await;
    assert_eq!(off.status, StatusCode::OK, "{off:?}");
    let on = user_action(app, &t, &id, "enable").await;
    assert_eq!(on.body["status"], "active", "{on:?}");
}

backend_tests!(
    a_user_is_invited_and_chooses_its_own_password,
    links_last_72_hours_and_a_new_invitation_replaces_the_old,
    a_tenants_first_manager_is_invited,
    inviting_staff_needs_step_up_and_api_tokens_cannot,
    concurrent_acceptances_spend_a_link_once,
    the_console_issues_a_fresh_link_when_mail_cannot_reach_someone,
    enabling_a_user_who_never_accepted_keeps_it_invited,
);
