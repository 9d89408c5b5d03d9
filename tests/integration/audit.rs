//! The audit log: what is recorded, how it is listed, and tamper detection by `kasho audit verify`.

use std::process::Command;

use axum::http::StatusCode;
use kasho::clock::Clock;
use serde_json::json;

use crate::backend_tests;
use crate::support::{PASSWORD, TestApp};

async fn state_changes_and_authentication_events_are_recorded(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (uid, email) = app.user(&t, &["CASHIER"]).await;
    let cashier = app.token(Some("acme"), &email).await;
    app.login(Some("acme"), &email, "a wrong password!!").await;
    app.get("/v1/audit-events", &cashier).await; // refused
    app.post(
        &format!("/v1/users/{uid}/disable"),
        Some(&t.manager_token),
        json!({}),
    )
    .await;
    app.post(
        "/v1/users",
        Some(&t.manager_token),
        json!({ "email": "bad" }),
    )
    .await; // invalid
    app.request(
        axum::http::Method::POST,
        "/v1/auth/logout",
        Some(&t.manager_token),
        None,
    )
    .await;

    let events = app.audit_chain(&t.id).await;
    let has = |action: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e.action == action && e.outcome == outcome)
    };
    for (action, outcome) in [
        ("tenant.create", "success"),
        ("user.create", "success"),
        ("auth.login", "success"),
        ("auth.login", "failure"),
        ("audit.list", "denied"),
        ("user.disable", "success"),
        ("user.create", "failure"),
        ("auth.logout", "success"),
    ] {
        assert!(
            has(action, outcome),
            "missing {action}/{outcome}: {:?}",
            events
                .iter()
                .map(|e| (&e.action, &e.outcome))
                .collect::<Vec<_>>()
        );
    }
    let disable = events.iter().find(|e| e.action == "user.disable").unwrap();
    assert_eq!(disable.actor_id.as_deref(), Some(t.manager_id.as_str()));
    assert_eq!(disable.target_id.as_deref(), Some(uid.as_str()));
    assert_eq!(disable.ip.as_deref(), Some("203.0.113.7"));
    assert!(
        disable
            .request_id
            .as_deref()
            .unwrap_or("")
            .starts_with("req_")
    );
    // The chain is contiguous and linked.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1);
        if i > 0 {
            assert_eq!(e.prev_hash, events[i - 1].hash);
        }
    }
    // The platform chain has the tenant creation too.
    assert!(
        app.audit_chain("platform")
            .await
            .iter()
            .any(|e| e.action == "tenant.create")
    );
}

async fn audit_events_list_newest_first_with_filters_and_cursor(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, email) = app.user(&t, &["AUDITOR"]).await;
    let auditor = app.token(Some("acme"), &email).await;
    let start = app.clock.now();
    app.clock.advance_seconds(10);
    for _ in 0..3 {
        app.token(Some("acme"), &email).await;
    }
    let all = app.get("/v1/audit-events?limit=100", &auditor).await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    let seqs: Vec<i64> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    let logins = app
        .get("/v1/audit-events?action=auth.login&limit=2", &auditor)
        .await;
    assert_eq!(logins.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(logins.body["has_more"], true);
    let last = logins.body["data"][1]["id"].as_str().unwrap();
    let next = app
        .get(
            &format!("/v1/audit-events?action=auth.login&limit=100&starting_after={last}"),
            &auditor,
        )
        .await;
    let n = next.body["data"].as_array().unwrap().len();
    assert!(n >= 2, "the rest of the logins: {n}");
    assert!(
        next.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] == "auth.login")
    );

    let since = start.plus_seconds(5).to_rfc3339();
    let recent = app
        .get(
            &format!("/v1/audit-events?limit=100&occurred_after={since}"),
            &auditor,
        )
        .await;
    assert_eq!(recent.status, StatusCode::OK, "{recent:?}");
    assert_eq!(
        recent.body["data"].as_array().unwrap().len(),
        3,
        "only the three later logins"
    );
    let by_manager = app
        .get(
            &format!("/v1/audit-events?limit=100&actor_id={}", t.manager_id),
            &auditor,
        )
        .await;
    assert!(
        by_manager.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor_id"] == t.manager_id.as_str())
    );
    let bad = app
        .get("/v1/audit-events?occurred_after=yesterday", &auditor)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["param"], "occurred_after");
}

fn verify(app: &TestApp) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["audit", "verify", "--data-dir"])
        .arg(app.data_dir.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error")
        .output()
        .expect("run kasho");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn editing_one_audit_row_makes_verify_fail(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    app.user(&t, &["CASHIER"]).await;
    let (ok, out) = verify(app);
    assert!(ok, "intact log must verify: {out}");
    assert!(out.contains("audit log intact"), "{out}");

    let victim = app.audit_chain(&t.id).await[1].clone();
    let n = app
        .raw_sql(&format!(
            "UPDATE audit_events SET outcome = 'failure' WHERE id = '{}'",
            victim.id
        ))
        .await;
    assert_eq!(n, 1);
    let (ok, out) = verify(app);
    assert!(!ok, "an edited record must fail verification: {out}");
    assert!(
        out.contains(&victim.id),
        "names the first bad record: {out}"
    );
}

async fn deleting_an_audit_row_makes_verify_fail(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    for _ in 0..3 {
        app.user(&t, &["CASHIER"]).await;
    }
    let chain = app.audit_chain(&t.id).await;
    app.raw_sql(&format!(
        "DELETE FROM audit_events WHERE id = '{}'",
        chain[2].id
    ))
    .await;
    let (ok, out) = verify(app);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&chain[3].id),
        "a deleted record is detected at its successor: {out}"
    );
}

async fn reordering_audit_rows_makes_verify_fail(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    for _ in 0..2 {
        app.user(&t, &["CASHIER"]).await;
    }
    let chain = app.audit_chain(&t.id).await;
    let (a, b) = (&chain[1], &chain[2]);
    app.raw_sql(&format!(
        "UPDATE audit_events SET seq = -1 WHERE id = '{}'",
        a.id
    ))
    .await;
    app.raw_sql(&format!(
        "UPDATE audit_events SET seq = {} WHERE id = '{}'",
        a.seq, b.id
    ))
    .await;
    app.raw_sql(&format!(
        "UPDATE audit_events SET seq = {} WHERE id = '{}'",
        b.seq, a.id
    ))
    .await;
    let (ok, out) = verify(app);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&b.id),
        "the record moved into the earlier place is named: {out}"
    );
}

async fn truncating_the_chain_makes_verify_fail(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    app.user(&t, &["CASHIER"]).await;
    let chain = app.audit_chain(&t.id).await;
    let last = chain.last().unwrap();
    app.raw_sql(&format!(
        "DELETE FROM audit_events WHERE id = '{}'",
        last.id
    ))
    .await;
    let (ok, out) = verify(app);
    assert!(!ok, "{out}");
    assert!(out.contains("removed from the end"), "{out}");
    let _ = PASSWORD;
}

async fn verify_without_the_master_key_refuses_rather_than_crying_tamper(app: &TestApp) {
    let admin = app.platform_admin().await;
    app.tenant(&admin, "acme").await;
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["audit", "verify", "--data-dir"])
        .arg(elsewhere.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("master key") && !text.contains("TAMPERED"),
        "{text}"
    );
    assert!(
        !elsewhere.path().join("keys").exists(),
        "verify never generates keys"
    );
}

backend_tests!(
    verify_without_the_master_key_refuses_rather_than_crying_tamper,
    state_changes_and_authentication_events_are_recorded,
    audit_events_list_newest_first_with_filters_and_cursor,
    editing_one_audit_row_makes_verify_fail,
    deleting_an_audit_row_makes_verify_fail,
    reordering_audit_rows_makes_verify_fail,
    truncating_the_chain_makes_verify_fail,
);
