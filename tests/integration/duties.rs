//! Segregation of duties and the tenant's administration (issue 13, items 3, 6 and 16): no
//! user holds MANAGER with COMPLIANCE_OFFICER (or a pair the tenant forbids); a KYC decision
//! is refused to someone the submitter recently invited or granted roles; existing holders of
//! a forbidden pair are flagged at start-up; erasing a staff member's customer record keeps
//! their login; the last active MANAGER keeps the role; break-glass takes two platform admins.

use axum::http::{Method, StatusCode};
use base64::Engine;
use kasho::domain::authz::Role;
use kasho::ids::{TenantId, UserId};
use kasho::store::{StoreError, UserChange};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{PASSWORD, Resp, TenantFixture, TestApp, free_port, serve_command};

fn submission_body() -> Value {
    let doc =
        base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.7\nscanned passport\n%%EOF\n");
    json!({ "requested_tier": 1, "documents": [
        { "document_type": "passport", "content_type": "application/pdf", "content": doc }
    ] })
}

async fn put_roles(app: &TestApp, token: &str, user: &str, roles: &[&str]) -> Resp {
    app.request(
        Method::PUT,
        &format!("/v1/users/{user}/roles"),
        Some(token),
        Some(json!({ "roles": roles })),
    )
    .await
}

async fn refusals(app: &TestApp, t: &TenantFixture, kind: &str) -> Vec<String> {
    app.audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.security_event.as_deref() == Some(kind))
        .map(|e| e.reason.unwrap_or_default())
        .collect()
}

async fn nobody_holds_manager_and_compliance_officer(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    // The attack: a manager creates a second identity holding both roles.
    for roles in [
        &["MANAGER", "COMPLIANCE_OFFICER"][..],
        &["COMPLIANCE_OFFICER", "CUSTOMER", "MANAGER"],
    ] {
        let r = app
            .post(
                "/v1/users",
                Some(&t.manager_token),
                json!({ "email": "twin@acme.test", "roles": roles }),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(r.code(), "forbidden_role_pair");
        assert_eq!(r.body["error"]["param"], "roles");
    }
    assert!(
        app.raw_strings("SELECT id FROM users WHERE email = 'twin@acme.test'")
            .await
            .is_empty()
    );
    // Nor by a role change.
    let (officer, _) = app.user(&t, &["COMPLIANCE_OFFICER"]).await;
    let r = put_roles(
        app,
        &t.manager_token,
        &officer,
        &["COMPLIANCE_OFFICER", "MANAGER"],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.code(), "forbidden_role_pair");
    let (manager2, _) = app.user(&t, &["MANAGER"]).await;
    let r = put_roles(
        app,
        &t.manager_token,
        &manager2,
        &["MANAGER", "COMPLIANCE_OFFICER"],
    )
    .await;
    assert_eq!(r.code(), "forbidden_role_pair", "{r:?}");
    assert_eq!(
        refusals(app, &t, "segregation_of_duties_refused").await,
        vec!["forbidden_role_pair:MANAGER+COMPLIANCE_OFFICER"; 4]
    );

    // The tenant may forbid more pairs, never fewer.
    let mut policy = app.get("/v1/security/policy", &t.manager_token).await.body;
    assert_eq!(
        policy["forbidden_role_pairs"],
        json!([["MANAGER", "COMPLIANCE_OFFICER"]])
    );
    policy["forbidden_role_pairs"] = json!([]);
    let r = app
        .request(
            Method::PUT,
            "/v1/security/policy",
            Some(&t.manager_token),
            Some(policy.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.body["error"]["param"], "forbidden_role_pairs");
    policy["forbidden_role_pairs"] =
        json!([["COMPLIANCE_OFFICER", "MANAGER"], ["CASHIER", "AUDITOR"]]);
    let r = app
        .request(
            Method::PUT,
            "/v1/security/policy",
            Some(&t.manager_token),
            Some(policy),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let me = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    let token = me.body["access_token"].as_str().unwrap().to_owned();
    let r = app
        .post(
            "/v1/users",
            Some(&token),
            json!({ "email": "pair@acme.test", "roles": ["AUDITOR", "CASHIER"] }),
        )
        .await;
    assert_eq!(r.code(), "forbidden_role_pair", "{r:?}");
    let r = app
        .post(
            "/v1/users",
            Some(&token),
            json!({ "email": "pair@acme.test", "roles": ["AUDITOR", "AGENT"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

async fn a_manager_cannot_decide_through_an_officer_it_just_appointed(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let customer = app
        .post("/v1/customers", Some(&t.manager_token), json!({}))
        .await;
    let cus = customer.body["id"].as_str().unwrap().to_owned();
    // The manager submits, then appoints an officer, which tries to approve.
    let s = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&t.manager_token),
            submission_body(),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    let sid = s.body["id"].as_str().unwrap().to_owned();
    let (_, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let approve = |token: String| {
        let path = format!("/v1/kyc/submissions/{sid}/approve");
        async move { app.post(&path, Some(&token), json!({ "tier": 1 })).await }
    };
    let r = approve(officer.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "kyc_decider_granted_by_submitter");
    // Granting the role later counts as well: an auditor made officer by the manager.
    let (auditor, auditor_email) = app.user(&t, &["AUDITOR"]).await;
    app.clock.advance_seconds(31 * 86_400);
    let manager = app.token(Some("acme"), "manager@acme.test").await;
    let r = put_roles(app, &manager, &auditor, &["COMPLIANCE_OFFICER"]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let promoted = app.token(Some("acme"), &auditor_email).await;
    let r = approve(promoted).await;
    assert_eq!(r.code(), "kyc_decider_granted_by_submitter", "{r:?}");
    // 30 days after the appointment the first officer may decide (its session is long gone).
    let officer = app
        .token(
            Some("acme"),
            &app.raw_strings(
                "SELECT email FROM users WHERE roles = 'COMPLIANCE_OFFICER' ORDER BY id",
            )
            .await[0],
        )
        .await;
    let r = approve(officer).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["status"], "approved");
    assert_eq!(
        refusals(app, &t, "segregation_of_duties_refused").await,
        vec!["decider_granted_by_submitter"; 2]
    );
}

async fn a_cashiers_submission_is_decided_by_the_managers_officer(app: &TestApp) {
    // The README's flow: the manager appoints the officer, a cashier submits.
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let (_, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let customer = app.post("/v1/customers", Some(&cashier), json!({})).await;
    let cus = customer.body["id"].as_str().unwrap();
    let s = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&cashier),
            submission_body(),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    let r = app
        .post(
            &format!(
                "/v1/kyc/submissions/{}/approve",
                s.body["id"].as_str().unwrap()
            ),
            Some(&officer),
            json!({ "tier": 1 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn existing_holders_of_a_forbidden_pair_are_flagged_at_start_up(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (twin, email) = app.user(&t, &["MANAGER"]).await;
    // Granted before the rule existed.
    app.raw_sql(&format!(
        "UPDATE users SET roles = 'MANAGER,COMPLIANCE_OFFICER' WHERE id = '{twin}'"
    ))
    .await;
    let flagged = kasho::service::duties::flag_forbidden_pairs(&app.core)
        .await
        .unwrap();
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0].user_id, twin);
    assert_eq!(flagged[0].pair, (Role::Manager, Role::ComplianceOfficer));
    assert_eq!(
        refusals(app, &t, "forbidden_role_pair").await,
        vec!["MANAGER+COMPLIANCE_OFFICER"]
    );
    // It keeps working...
    let token = app.token(Some("acme"), &email).await;
    assert_eq!(app.get("/v1/me", &token).await.status, StatusCode::OK);

    // ...and `kasho serve` says so at start-up.
    let port = free_port();
    let log = app.data_dir.path().join("serve.log");
    let served = crate::support::Served::start(
        serve_command(app.data_dir.path(), &app.database_url, port, &log),
        port,
        log,
    )
    .await;
    let text = served.log();
    assert!(
        text.contains("a user holds two roles that may not be held together")
            && text.contains(&twin),
        "{text}"
    );
    drop(served);

    // Until a manager removes one of the roles.
    let r = put_roles(app, &t.manager_token, &twin, &["MANAGER"]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        kasho::service::duties::flag_forbidden_pairs(&app.core)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A staff user who banks with the tenant: roles plus CUSTOMER, linked to a customer record.
async fn staff_customer(
    app: &TestApp,
    t: &TenantFixture,
    roles: &[&str],
) -> (String, String, String) {
    let mut all = roles.to_vec();
    all.push("CUSTOMER");
    let (user, email) = app.user(t, &all).await;
    let c = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "user_id": user, "first_name": "Grace", "last_name": "Hopper", "email": email }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    (user, email, c.body["id"].as_str().unwrap().to_owned())
}

async fn erasing_a_staff_members_customer_record_keeps_their_login(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (grace, grace_email, cus) = staff_customer(app, &t, &["MANAGER"]).await;
    let (_, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let erase = |token: String, id: String| async move {
        app.post(
            &format!("/v1/customers/{id}/erase"),
            Some(&token),
            json!({ "reason": "data_subject_request" }),
        )
        .await
    };
    // The officer may erase customers, but not change a manager: refused, nothing changed.
    let r = erase(officer.clone(), cus.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "linked_user_not_manageable");
    let export = app
        .get(&format!("/v1/customers/{cus}/export"), &t.manager_token)
        .await;
    assert_eq!(export.body["customer"]["status"], "active", "{export:?}");
    let grace_token = app.token(Some("acme"), &grace_email).await;
    // Nor may the manager erase its own record that way (it cannot change its own roles).
    let own = erase(grace_token.clone(), cus.clone()).await;
    assert_eq!(own.code(), "linked_user_not_manageable", "{own:?}");

    // Another manager may: the record goes, the login stays, without its CUSTOMER role.
    let done = erase(t.manager_token.clone(), cus.clone()).await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert_eq!(done.body["user_unlinked"], grace.as_str());
    assert!(done.body["user_disabled"].is_null(), "{done:?}");
    let user = app
        .get(&format!("/v1/users/{grace}"), &t.manager_token)
        .await;
    assert_eq!(user.body["status"], "active", "{user:?}");
    assert_eq!(user.body["email"], grace_email.as_str());
    assert_eq!(user.body["roles"], json!(["MANAGER"]));
    // Its sessions ended with the role change; it signs in again as a manager.
    assert_eq!(
        app.get("/v1/me", &grace_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let again = app.token(Some("acme"), &grace_email).await;
    let me = app.get("/v1/me", &again).await;
    assert_eq!(me.body["roles"], json!(["MANAGER"]), "{me:?}");
    let chain = app.audit_chain(&t.id).await;
    assert!(chain.iter().any(|e| e.action == "user.roles.update"
        && e.target_id.as_deref() == Some(grace.as_str())
        && e.reason.as_deref() == Some("customer_erased")));
    assert!(
        !chain
            .iter()
            .any(|e| e.action == "user.disable" && e.target_id.as_deref() == Some(grace.as_str()))
    );

    // A customer-only login is still erased with its customer (the officer may do that).
    let (_, _, plain) = staff_customer(app, &t, &[]).await;
    let r = erase(officer, plain).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body["user_disabled"].is_string(), "{r:?}");
}

async fn the_last_active_manager_keeps_the_role(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let tenant = TenantId::parse(&t.id).unwrap();
    let (m2, _) = app.user(&t, &["MANAGER"]).await;
    let store = &app.core.store;
    let m1 = UserId::parse(&t.manager_id).unwrap();
    let m2 = UserId::parse(&m2).unwrap();
    let now = app.clock_now();
    // Two managers: one may go.
    store
        .update_user(
            &tenant,
            &m2,
            &UserChange::Roles(vec![Role::Auditor]),
            now,
            None,
            &[],
        )
        .await
        .unwrap();
    // The last one may neither lose the role nor be disabled.
    for change in [
        UserChange::Roles(vec![Role::Auditor]),
        UserChange::Roles(vec![Role::Cashier, Role::Customer]),
        UserChange::Status("disabled"),
    ] {
        let r = store
            .update_user(&tenant, &m1, &change, now, None, &[])
            .await;
        assert!(
            matches!(r, Err(StoreError::LastManager)),
            "{change:?}: {r:?}"
        );
    }
    // An invited (or disabled) manager is no active manager.
    let m3 = app
        .post_stepping_up(
            "/v1/users",
            &t.manager_token,
            json!({ "email": "m3@acme.test", "roles": ["MANAGER"] }),
        )
        .await;
    assert_eq!(m3.body["status"], "invited");
    let r = store
        .update_user(
            &tenant,
            &m1,
            &UserChange::Status("disabled"),
            now,
            None,
            &[],
        )
        .await;
    assert!(matches!(r, Err(StoreError::LastManager)), "{r:?}");
    // Changes that keep the role, or touch others, go through.
    store
        .update_user(
            &tenant,
            &m1,
            &UserChange::Roles(vec![Role::Manager, Role::Customer]),
            now,
            None,
            &[],
        )
        .await
        .unwrap();
    store
        .update_user(
            &tenant,
            &m2,
            &UserChange::Status("disabled"),
            now,
            None,
            &[],
        )
        .await
        .unwrap();
    let me = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
}

async fn two_managers_demoting_each_other_at_once_cannot_both_succeed(app: &TestApp) {
    let admin = app.platform_admin().await;
    for round in 0..4 {
        let t = app.tenant(&admin, &format!("race{round}")).await;
        let (other, other_email) = app.user(&t, &["MANAGER"]).await;
        let other_token = app.token(Some(&t.slug), &other_email).await;
        // Both fresh sessions (role changes need step-up).
        let (a, b) = if round % 2 == 0 {
            (
                TestApp::post_request(
                    &format!("/v1/users/{other}/disable"),
                    Some(&t.manager_token),
                    &json!({}),
                ),
                TestApp::post_request(
                    &format!("/v1/users/{}/disable", t.manager_id),
                    Some(&other_token),
                    &json!({}),
                ),
            )
        } else {
            let put = |path: String, token: &str| {
                axum::http::Request::builder()
                    .method(Method::PUT)
                    .uri(path)
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(axum::body::Body::from(r#"{"roles":["AUDITOR"]}"#))
                    .unwrap()
            };
            (
                put(format!("/v1/users/{other}/roles"), &t.manager_token),
                put(format!("/v1/users/{}/roles", t.manager_id), &other_token),
            )
        };
        let answers = app.send_parallel(vec![a, b]).await;
        let ok = answers
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "round {round}: {answers:?}");
        // The other one was refused by the rule, or found its session ended by the first.
        for r in answers.iter().filter(|r| r.status != StatusCode::OK) {
            assert!(
                r.code() == "last_manager" || r.status == StatusCode::UNAUTHORIZED,
                "{r:?}"
            );
        }
        let active = app
            .raw_strings(&format!(
                "SELECT id FROM users WHERE tenant_id = '{}' AND status = 'active' AND roles LIKE '%MANAGER%'",
                t.id
            ))
            .await;
        assert_eq!(active.len(), 2 - ok, "round {round}: {answers:?}");
    }
}

async fn break_glass_takes_two_platform_admins(app: &TestApp) {
    let first = app.platform_admin().await;
    let t = app.tenant(&first, "acme").await;
    let request = |admin: String, email: &'static str| {
        let path = format!("/v1/tenants/{}/break-glass", t.id);
        async move {
            app.post(&path, Some(&admin), json!({ "email": email }))
                .await
        }
    };
    // A platform with a single admin cannot use it, and says so.
    let alone = request(first.clone(), "rescue@acme.test").await;
    assert_eq!(alone.status, StatusCode::CONFLICT, "{alone:?}");
    assert_eq!(alone.code(), "break_glass_needs_two_admins");

    let second = app.platform_admin().await;
    let first_id = app.get("/v1/me", &first).await.body["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = request(first.clone(), "rescue@acme.test").await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["status"], "pending");
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("brk_"));
    let approve = |admin: String, id: String| {
        let path = format!("/v1/tenants/{}/break-glass/{id}/approve", t.id);
        async move { app.post(&path, Some(&admin), json!({})).await }
    };
    // Not by the requester.
    let own = approve(first.clone(), id.clone()).await;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{own:?}");
    assert_eq!(own.code(), "break_glass_same_admin");
    // Nor by the database: the four-eyes rule is a constraint.
    let forced = app
        .try_raw_sql(&format!(
            "UPDATE break_glass_requests SET approved_by = '{first_id}' WHERE id = '{id}'"
        ))
        .await;
    assert!(forced.is_err(), "{forced:?}");
    assert!(
        app.raw_strings("SELECT id FROM users WHERE email = 'rescue@acme.test'")
            .await
            .is_empty(),
        "nothing before the approval"
    );

    let ok = approve(second.clone(), id.clone()).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body["status"], "approved");
    let user = ok.body["user_id"].as_str().unwrap().to_owned();
    let twice = approve(second.clone(), id.clone()).await;
    assert_eq!(twice.code(), "break_glass_already_approved", "{twice:?}");
    // The new manager is invited like anyone else and chooses its own password.
    let accepted = app.accept_invitation("rescue@acme.test", PASSWORD).await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(accepted.body["user_id"], user.as_str());
    let token = app.token(Some("acme"), "rescue@acme.test").await;
    let me = app.get("/v1/me", &token).await;
    assert_eq!(me.body["roles"], json!(["MANAGER"]));

    // A request waits 24 hours for its second admin, no longer.
    let late = request(second.clone(), "later@acme.test").await;
    let late_id = late.body["id"].as_str().unwrap().to_owned();
    // A second platform admin's stale session steps up first.
    app.clock.advance_seconds(11 * 60);
    let stale = approve(first.clone(), late_id.clone()).await;
    assert_eq!(stale.code(), "step_up_required", "{stale:?}");
    app.clock.advance_seconds(24 * 3600);
    let third = app.platform_admin().await;
    let listed = app
        .get(&format!("/v1/tenants/{}/break-glass", t.id), &third)
        .await;
    assert_eq!(listed.body["data"][0]["status"], "expired", "{listed:?}");
    assert_eq!(listed.body["data"][1]["status"], "approved", "{listed:?}");
    let expired = approve(third, late_id).await;
    assert_eq!(expired.code(), "break_glass_expired", "{expired:?}");

    // Fully audited in the tenant's chain.
    let chain = app.audit_chain(&t.id).await;
    let events: Vec<(String, String, String)> = chain
        .iter()
        .filter(|e| e.action.starts_with("tenant.break_glass"))
        .map(|e| {
            (
                e.security_event.clone().unwrap_or_default(),
                e.outcome.clone(),
                e.reason.clone().unwrap_or_default(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        events,
        vec![
            s("break_glass_requested", "denied", "single_platform_admin"),
            s("break_glass_requested", "success", ""),
            s("break_glass_approved", "denied", "same_admin"),
            s(
                "break_glass_approved",
                "success",
                &format!("requested_by={first_id}"),
            ),
            s("break_glass_approved", "denied", "already_approved"),
            s("break_glass_requested", "success", ""),
            s("break_glass_approved", "denied", "expired"),
        ]
    );
    assert!(chain.iter().any(|e| e.action == "user.create"
        && e.target_id.as_deref() == Some(user.as_str())
        && e.reason.as_deref() == Some("break_glass")));
    let platform = app.audit_chain("platform").await;
    assert!(
        platform
            .iter()
            .filter(|e| e.action.starts_with("tenant.break_glass"))
            .count()
            >= 7
    );
}

backend_tests!(
    nobody_holds_manager_and_compliance_officer,
    a_manager_cannot_decide_through_an_officer_it_just_appointed,
    a_cashiers_submission_is_decided_by_the_managers_officer,
    existing_holders_of_a_forbidden_pair_are_flagged_at_start_up,
    erasing_a_staff_members_customer_record_keeps_their_login,
    the_last_active_manager_keeps_the_role,
    two_managers_demoting_each_other_at_once_cannot_both_succeed,
    break_glass_takes_two_platform_admins,
);
