//! The role→permission table applied to every route, and tenant isolation.

use axum::http::{Method, StatusCode};
use kasho::domain::authz::{PermissionSet, Role};
use kasho::http::routes::{Access, table};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestApp;

/// Fills a path template with a well-formed id that exists nowhere.
fn concrete(path: &str) -> String {
    let prefix = if path.starts_with("/v1/tenants/") {
        "ten"
    } else if path.starts_with("/v1/accounts/") {
        "acc"
    } else if path.starts_with("/v1/customers/") {
        "cus"
    } else if path.starts_with("/v1/transfers/") {
        "trf"
    } else if path.starts_with("/v1/holds/") {
        "hld"
    } else if path.starts_with("/v1/kyc/submissions/") {
        "kyc"
    } else if path.starts_with("/v1/kyc/documents/") {
        "kyd"
    } else {
        "usr"
    };
    path.replace(
        "{id}",
        &format!("{prefix}_0000000000000000000000000000000a"),
    )
}

async fn every_route_grants_exactly_what_the_role_table_says(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let mut tokens = vec![(Role::PlatformAdmin, admin.clone())];
    for role in Role::TENANT_ROLES {
        let (_, token) = app.user_token(&t, &[role.as_str()]).await;
        tokens.push((role, token));
    }
    let routes = table();
    assert!(routes.len() >= 18, "route table unexpectedly small");
    let mut checked = 0;
    for def in &routes {
        let path = concrete(def.path);
        let body = (def.method != Method::GET).then(|| json!({}));
        // Without credentials: every non-public route answers 401.
        let anon = app
            .request(def.method.clone(), &path, None, body.clone())
            .await;
        match def.access {
            Access::Public => assert_ne!(
                anon.status,
                StatusCode::UNAUTHORIZED,
                "{} {} is public",
                def.method,
                def.path
            ),
            // Without a configured metrics token the route does not exist on the main
            // listener (observability.rs tests it with one).
            Access::MetricsToken => assert_eq!(anon.status, StatusCode::NOT_FOUND),
            _ => {
                assert_eq!(
                    anon.status,
                    StatusCode::UNAUTHORIZED,
                    "{} {} without a token",
                    def.method,
                    def.path
                );
                assert_eq!(anon.code(), "authentication_required");
            }
        }
        let Access::Permission(perm) = def.access else {
            continue;
        };
        for (role, token) in &tokens {
            let granted = PermissionSet::for_roles(&[*role]).scope(perm).is_some();
            let r = app
                .request(def.method.clone(), &path, Some(token), body.clone())
                .await;
            if granted {
                assert!(
                    r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED,
                    "{role} should pass {} {} ({perm}): {r:?}",
                    def.method,
                    def.path
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{role} must be refused {} {} ({perm}): {r:?}",
                    def.method,
                    def.path
                );
                assert_eq!(r.code(), "forbidden");
            }
            checked += 1;
        }
    }
    let guarded = routes
        .iter()
        .filter(|d| matches!(d.access, Access::Permission(_)))
        .count();
    assert_eq!(
        checked,
        guarded * tokens.len(),
        "every guarded route was tried with every role"
    );
    assert!(guarded >= 28);
    // Every refusal was audited as denied.
    let denied = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.outcome == "denied")
        .count();
    assert!(denied > 0);
}

async fn another_tenants_resources_answer_404_like_missing_ones(app: &TestApp) {
    let admin = app.platform_admin().await;
    let a = app.tenant(&admin, "tenant-a").await;
    let b = app.tenant(&admin, "tenant-b").await;
    let (b_user, _) = app.user(&b, &["CASHIER"]).await;
    let missing = "usr_0000000000000000000000000000000a";
    for id in [b_user.as_str(), b.manager_id.as_str(), missing] {
        let get = app.get(&format!("/v1/users/{id}"), &a.manager_token).await;
        let disable = app
            .post(
                &format!("/v1/users/{id}/disable"),
                Some(&a.manager_token),
                json!({}),
            )
            .await;
        let enable = app
            .post(
                &format!("/v1/users/{id}/enable"),
                Some(&a.manager_token),
                json!({}),
            )
            .await;
        let roles = app
            .request(
                Method::PUT,
                &format!("/v1/users/{id}/roles"),
                Some(&a.manager_token),
                Some(json!({ "roles": ["CUSTOMER"] })),
            )
            .await;
        for r in [&get, &disable, &enable, &roles] {
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}: {r:?}");
            assert_eq!(
                r.body["error"]["message"], get.body["error"]["message"],
                "identical to a missing user"
            );
        }
    }
    // B's user was not touched.
    let (_, b_token) = (0, b.manager_token.clone());
    let u = app.get(&format!("/v1/users/{b_user}"), &b_token).await;
    assert_eq!(u.body["roles"], json!(["CASHIER"]));
    assert_eq!(u.body["status"], "active");
    // Lists and the audit log show only the caller's tenant.
    let list = app.get("/v1/users?limit=100", &a.manager_token).await;
    assert!(
        list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["tenant_id"] == a.id.as_str())
    );
    let audit = app
        .get("/v1/audit-events?limit=100", &a.manager_token)
        .await;
    let events = audit.body["data"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["tenant_id"] == a.id.as_str()),
        "{}",
        audit.body
    );
    assert!(events.iter().all(|e| e["target_id"] != b_user.as_str()));
}

backend_tests!(
    every_route_grants_exactly_what_the_role_table_says,
    another_tenants_resources_answer_404_like_missing_ones,
);
