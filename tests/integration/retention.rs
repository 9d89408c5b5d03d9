//! Records of processing and retention: who may read the registry, what the retention job
//! purges and keeps, the 12-month audit floor, and audit verification after pruning.

use std::process::Command;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use kasho::ids::SessionId;
use kasho::service::Core;
use kasho::service::retention::{RetentionReport, run_once};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::backend_tests;
use crate::support::{PASSWORD, TenantFixture, TestApp};

const DAY: i64 = 86_400;
const PATH: &str = "/v1/compliance/processing-records";

/// GET through another router (a differently configured instance).
async fn get_via(router: &Router, path: &str, token: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The session id (`sid`) of an access token.
fn sid(access_token: &str) -> SessionId {
    let payload = access_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: Value = serde_json::from_slice(&bytes).unwrap();
    SessionId::parse(claims["sid"].as_str().unwrap()).unwrap()
}

async fn session_exists(app: &TestApp, id: &SessionId) -> bool {
    app.core.store.get_session(id).await.unwrap().is_some()
}

async fn run(core: &Core, app: &TestApp) -> RetentionReport {
    run_once(core, app.clock_now()).await.unwrap()
}

fn verify_cli(app: &TestApp) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["audit", "verify", "--data-dir"])
        .arg(app.data_dir.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn verify_service(app: &TestApp) -> Result<(), String> {
    kasho::service::audit::verify_all(app.core.store.as_ref(), &app.core.sealer, |_| {}, |_| {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn processing_records_are_published_to_compliance_roles_only(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let mut allowed = vec![t.manager_token.clone()];
    for role in ["COMPLIANCE_OFFICER", "AUDITOR"] {
        allowed.push(app.user_token(&t, &[role]).await.1);
    }
    for token in &allowed {
        let r = app.get(PATH, token).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["object"], "list");
        assert_eq!(r.body["has_more"], false);
        let data = r.body["data"].as_array().unwrap();
        let ids: Vec<&str> = data.iter().map(|d| d["id"].as_str().unwrap()).collect();
        for id in [
            "user_accounts",
            "sessions_and_devices",
            "accounts_and_ledger",
            "transaction_details",
            "audit_and_security_logs",
            "kyc_documents",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let sessions = data
            .iter()
            .find(|d| d["id"] == "sessions_and_devices")
            .unwrap();
        assert_eq!(sessions["object"], "processing_record");
        assert_eq!(sessions["legal_basis"][0]["code"], "legitimate_interest");
        assert_eq!(sessions["retention"]["days"], 30);
        assert_eq!(
            sessions["retention"]["config_key"],
            "session_retention_days"
        );
        assert_eq!(sessions["encrypted_at_rest"], false);
        let ledger = data
            .iter()
            .find(|d| d["id"] == "accounts_and_ledger")
            .unwrap();
        assert!(
            ledger["legal_basis"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["code"] == "legal_obligation")
        );
        let policy = &r.body["retention_in_force"];
        assert_eq!(policy["session_retention_days"], 30);
        assert_eq!(policy["audit_retention_days"], 396);
        assert_eq!(policy["audit_retention_minimum_days"], 366);
        assert_eq!(policy["idempotency_ttl_seconds"], 86_400);
    }
    for role in ["AGENT", "CASHIER", "CUSTOMER"] {
        let (_, token) = app.user_token(&t, &[role]).await;
        let r = app.get(PATH, &token).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{role}"
        );
    }
    let r = app.get(PATH, &admin).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "platform admin: {r:?}");
    let anon = app.request(Method::GET, PATH, None, None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    // The refusals are audited like every other one.
    assert!(app.audit_chain(&t.id).await.iter().any(|e| {
        e.action == "compliance.processing_records.read"
            && e.outcome == "denied"
            && e.reason.as_deref() == Some("compliance:read")
    }));

    // The periods published are the ones configured, the audit floor applied.
    let (_, router) = app
        .instance_with(&[
            ("audit_retention_days", "1"),
            ("session_retention_days", "7"),
        ])
        .await;
    let token = app.token(Some("acme"), "manager@acme.test").await;
    let (status, body) = get_via(&router, PATH, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let policy = &body["retention_in_force"];
    assert_eq!(policy["session_retention_days"], 7);
    assert_eq!(policy["audit_retention_days_configured"], 1);
    assert_eq!(policy["audit_retention_days"], 366);
    let audit = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "audit_and_security_logs")
        .unwrap();
    assert_eq!(audit["retention"]["days"], 366);
}

async fn deposit_keyed(
    app: &TestApp,
    token: &str,
    account: &str,
    key: &str,
) -> crate::support::Resp {
    let body = json!({ "account_id": account, "amount": 100, "currency": "USD" });
    let req = Request::post("/v1/deposits")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    app.send(req).await
}

async fn account(app: &TestApp, t: &TenantFixture) -> String {
    let c = app
        .post("/v1/customers", Some(&t.manager_token), json!({}))
        .await;
    let a = app
        .post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": c.body["id"], "currency": "USD" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    a.body["id"].as_str().unwrap().to_owned()
}

async fn refresh(app: &TestApp, token: &str) -> crate::support::Resp {
    app.post("/v1/auth/refresh", None, json!({ "refresh_token": token }))
        .await
}

async fn the_job_purges_ended_sessions_and_spent_keys_but_nothing_live(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    // Session B is left alone for days: this tenant lets sessions idle up to their lifetime.
    let mut policy = app.get("/v1/security/policy", &t.manager_token).await.body;
    policy["session_idle_timeout_seconds"] = json!(2_592_000);
    let r = app
        .request(
            Method::PUT,
            "/v1/security/policy",
            Some(&t.manager_token),
            Some(policy),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let (_, cashier) = app.user(&t, &["CASHIER"]).await;
    let acc = account(app, &t).await;
    // t0: session A (signed out at once), session B (left alone), key K1.
    let a = app.login(Some("acme"), &cashier, PASSWORD).await;
    let a_token = a.body["access_token"].as_str().unwrap().to_owned();
    let a_refresh = a.body["refresh_token"].as_str().unwrap().to_owned();
    let b = app.login(Some("acme"), &cashier, PASSWORD).await;
    let b_sid = sid(b.body["access_token"].as_str().unwrap());
    let mut b_refresh = b.body["refresh_token"].as_str().unwrap().to_owned();
    let out = app
        .request(Method::POST, "/v1/auth/logout", Some(&a_token), None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let k1 = deposit_keyed(app, &t.manager_token, &acc, "k1").await;
    assert_eq!(k1.status, StatusCode::CREATED, "{k1:?}");

    // t0 + 2 days: K1 has expired (24 h), K2 is live; A ended 2 days ago (kept 30 days).
    app.clock.advance_seconds(2 * DAY);
    let manager = app.token(Some("acme"), "manager@acme.test").await;
    let k2 = deposit_keyed(app, &manager, &acc, "k2").await;
    assert_eq!(k2.status, StatusCode::CREATED, "{k2:?}");
    let r1 = run(&app.core, app).await;
    assert_eq!(
        r1.counts.idempotency_keys, 1,
        "only the expired key: {r1:?}"
    );
    assert_eq!(r1.counts.sessions, 0, "{r1:?}");
    assert_eq!(r1.counts.refresh_tokens, 0, "{r1:?}");
    assert_eq!(r1.counts.audit_events, 0, "{r1:?}");
    assert_eq!(r1.reset_tokens, Some(0), "no reset was requested: {r1:?}");
    assert_eq!(r1.counts.mail_messages, 0, "{r1:?}");
    assert!(
        session_exists(app, &sid(&a_token)).await,
        "ended 2 days ago: kept"
    );
    // The live key still replays; the live session still refreshes.
    let again = deposit_keyed(app, &manager, &acc, "k2").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(again.body, k2.body);
    let rb = refresh(app, &b_refresh).await;
    assert_eq!(rb.status, StatusCode::OK, "{rb:?}");
    b_refresh = rb.body["refresh_token"].as_str().unwrap().to_owned();
    // A's refresh token still answers as a spent session's, not as an unknown token.
    let ra = refresh(app, &a_refresh).await;
    assert_eq!(ra.status, StatusCode::UNAUTHORIZED, "{ra:?}");

    // t0 + 40 days: session D (live), session E (signed out now).
    app.clock.advance_seconds(38 * DAY);
    let d = app.login(Some("acme"), &cashier, PASSWORD).await;
    let d_refresh = d.body["refresh_token"].as_str().unwrap().to_owned();
    let d_sid = sid(d.body["access_token"].as_str().unwrap());
    let e = app.login(Some("acme"), &cashier, PASSWORD).await;
    let e_token = e.body["access_token"].as_str().unwrap().to_owned();
    app.request(Method::POST, "/v1/auth/logout", Some(&e_token), None)
        .await;

    // t0 + 61 days: A (revoked at t0) and B (expired at t0 + 30 days) ended more than 30 days
    // ago; E ended 21 days ago; D is live.
    app.clock.advance_seconds(21 * DAY);
    let r2 = run(&app.core, app).await;
    assert!(!session_exists(app, &sid(&a_token)).await, "A purged");
    assert!(!session_exists(app, &b_sid).await, "B purged");
    assert!(
        session_exists(app, &sid(&e_token)).await,
        "E ended 21 days ago: kept"
    );
    assert!(session_exists(app, &d_sid).await, "D is live");
    assert!(r2.counts.sessions >= 2, "{r2:?}");
    assert!(
        r2.counts.refresh_tokens >= 3,
        "A's token and B's two went with their sessions: {r2:?}"
    );
    assert_eq!(r2.counts.idempotency_keys, 1, "K2, expired since: {r2:?}");
    // B's refresh token is gone with its session; D keeps working.
    let gone = refresh(app, &b_refresh).await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
    let rd = refresh(app, &d_refresh).await;
    assert_eq!(rd.status, StatusCode::OK, "{rd:?}");

    // Each run that purged something left one record in the platform chain; a run with nothing
    // to purge leaves none.
    let r3 = run(&app.core, app).await;
    assert_eq!(r3.counts.total(), 0, "{r3:?}");
    let runs: Vec<_> = app
        .audit_chain("platform")
        .await
        .into_iter()
        .filter(|e| e.action == "retention.purge")
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].actor_type, "system");
    assert_eq!(runs[0].outcome, "success");
    assert_eq!(
        runs[0].reason.as_deref(),
        Some("sessions=0,refresh_tokens=0,idempotency_keys=1,audit_events=0,audit_chains=0")
    );
    assert!(
        runs[1]
            .reason
            .as_deref()
            .unwrap()
            .contains(&format!("sessions={}", r2.counts.sessions))
    );
    verify_service(app).await.unwrap();
}

/// A tenant with a few records in its chain and the platform's, all dated now.
async fn tenant_with_records(app: &TestApp) -> TenantFixture {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    for _ in 0..3 {
        app.user(&t, &["CASHIER"]).await;
    }
    t
}

async fn audit_records_younger_than_twelve_months_survive_a_one_day_retention(app: &TestApp) {
    let t = tenant_with_records(app).await;
    let (core, _) = app.instance_with(&[("audit_retention_days", "1")]).await;
    let tenant_before = app.audit_chain(&t.id).await;
    let platform_before = app.audit_chain("platform").await;
    assert!(tenant_before.len() >= 5);

    // Two days, then 365 days later: nothing is old enough for the 366-day floor.
    app.clock.advance_seconds(2 * DAY);
    let r = run(&core, app).await;
    assert_eq!(r.audit_days, 366, "one configured day is raised to 366");
    assert_eq!(r.counts.audit_events, 0, "{r:?}");
    app.clock.advance_seconds(363 * DAY);
    // New records a year after the first ones.
    let manager = app.token(Some("acme"), "manager@acme.test").await;
    app.post(
        "/v1/users",
        Some(&manager),
        json!({ "email": "late@acme.test", "roles": ["AGENT"] }),
    )
    .await;
    let r = run(&core, app).await;
    assert_eq!(r.counts.audit_events, 0, "365 days old is kept: {r:?}");
    assert_eq!(app.audit_chain(&t.id).await[0].seq, 1);

    // Day 367: the first records are past 366 days and go; the year-later ones stay.
    app.clock.advance_seconds(2 * DAY);
    let r = run(&core, app).await;
    let old = |rs: &[kasho::domain::audit::AuditRecord]| {
        rs.iter()
            .filter(|e| e.occurred_at < r.audit_cutoff.as_micros())
            .count() as u64
    };
    let expected = old(&tenant_before) + old(&platform_before);
    assert_eq!(
        r.counts.audit_events, expected,
        "exactly the records older than the cutoff: {r:?}"
    );
    assert!(r.counts.audit_chains >= 2, "{r:?}");
    let tenant_after = app.audit_chain(&t.id).await;
    assert!(
        tenant_after
            .iter()
            .all(|e| e.occurred_at >= r.audit_cutoff.as_micros()),
        "nothing younger than the cutoff was kept out, nothing older left"
    );
    assert_eq!(
        tenant_after[0].seq,
        tenant_before.len() as i64 + 1,
        "the chain now starts after the pruned records"
    );
    assert!(
        tenant_after
            .iter()
            .any(|e| e.target_type.as_deref() == Some("user"))
    );
    let cps = app.core.store.audit_checkpoints().await.unwrap();
    let cp = cps.iter().find(|c| c.chain == t.id).unwrap();
    assert_eq!(cp.seq, tenant_before.len() as i64);
    assert_eq!(cp.hash, tenant_before.last().unwrap().hash);
    assert_eq!(tenant_after[0].prev_hash, cp.hash);
    // Both verifiers accept the pruned log.
    verify_service(app).await.unwrap();
    let (ok, out) = verify_cli(app);
    assert!(ok && out.contains("audit log intact"), "{out}");
    // The run is itself on record, with its counts.
    let purge = app
        .audit_chain("platform")
        .await
        .into_iter()
        .rev()
        .find(|e| e.action == "retention.purge")
        .unwrap();
    assert!(
        purge
            .reason
            .as_deref()
            .unwrap()
            .contains(&format!("audit_events={expected}")),
        "{purge:?}"
    );
    // Pruning again later moves the checkpoint on and still verifies.
    app.clock.advance_seconds(400 * DAY);
    let r = run(&core, app).await;
    assert!(r.counts.audit_events > 0, "{r:?}");
    verify_service(app).await.unwrap();
}

async fn a_young_record_stops_the_prune_even_ahead_of_older_ones(app: &TestApp) {
    // Clocks may disagree: the chain's first records are dated later than the ones after them.
    let t0 = app.clock_now();
    app.clock.set(t0.plus_seconds(10 * DAY));
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    app.clock.set(t0);
    let back = TenantFixture {
        manager_token: app.token(Some("acme"), "manager@acme.test").await,
        ..t
    };
    for _ in 0..2 {
        app.user(&back, &["CASHIER"]).await;
    }
    let before = app.audit_chain(&back.id).await;
    let (core, _) = app.instance_with(&[("audit_retention_days", "1")]).await;
    // The cutoff falls between the two dates: the later-dated first records must stay, and
    // so must everything after them.
    app.clock.set(t0.plus_seconds(371 * DAY));
    let r = run(&core, app).await;
    assert!(r.audit_cutoff > t0 && r.audit_cutoff < t0.plus_seconds(10 * DAY));
    assert_eq!(app.audit_chain(&back.id).await.len(), before.len(), "{r:?}");
    assert!(
        app.core
            .store
            .audit_checkpoints()
            .await
            .unwrap()
            .iter()
            .all(|c| c.chain != back.id)
    );
    // Once all of them are old enough, all go, and the chain still verifies.
    app.clock.set(t0.plus_seconds(400 * DAY));
    let r = run(&core, app).await;
    assert!(r.counts.audit_events >= before.len() as u64, "{r:?}");
    assert!(app.audit_chain(&back.id).await.len() < before.len());
    verify_service(app).await.unwrap();
}

/// A pruned log: the tenant's first records gone behind a checkpoint, later records kept.
async fn pruned(app: &TestApp) -> TenantFixture {
    let t = tenant_with_records(app).await;
    app.clock.advance_seconds(400 * DAY);
    let manager = app.token(Some("acme"), "manager@acme.test").await;
    for i in 0..3 {
        app.post(
            "/v1/users",
            Some(&manager),
            json!({ "email": format!("late{i}@acme.test"), "roles": ["AGENT"] }),
        )
        .await;
    }
    let r = run(&app.core, app).await;
    assert!(r.counts.audit_events > 0, "{r:?}");
    verify_service(app).await.unwrap();
    t
}

async fn tampering_after_pruning_is_detected(app: &TestApp) {
    let t = pruned(app).await;
    let kept = app.audit_chain(&t.id).await;
    let cp = app
        .core
        .store
        .audit_checkpoints()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.chain == t.id)
        .unwrap();
    let (first, second) = (&kept[0], &kept[1]);

    // An edited record after the checkpoint.
    app.raw_sql(&format!(
        "UPDATE audit_events SET outcome = 'failure' WHERE id = '{}'",
        second.id
    ))
    .await;
    let (ok, out) = verify_cli(app);
    assert!(!ok && out.contains(&second.id), "{out}");
    app.raw_sql(&format!(
        "UPDATE audit_events SET outcome = '{}' WHERE id = '{}'",
        second.outcome, second.id
    ))
    .await;
    verify_service(app).await.unwrap();

    // A checkpoint moved on to hide the first kept record: its seal no longer matches.
    app.raw_sql(&format!(
        "UPDATE audit_checkpoints SET seq = {}, hash = '{}' WHERE chain = '{}'",
        first.seq, first.hash, t.id
    ))
    .await;
    let (ok, out) = verify_cli(app);
    assert!(!ok && out.contains("checkpoint"), "{out}");
    app.raw_sql(&format!(
        "UPDATE audit_checkpoints SET seq = {}, hash = '{}' WHERE chain = '{}'",
        cp.seq, cp.hash, t.id
    ))
    .await;
    verify_service(app).await.unwrap();

    // The checkpoint removed: the chain's start is a gap again (deletion without a checkpoint).
    app.raw_sql(&format!(
        "DELETE FROM audit_checkpoints WHERE chain = '{}'",
        t.id
    ))
    .await;
    let (ok, out) = verify_cli(app);
    assert!(!ok && out.contains(&first.id), "{out}");
    app.raw_sql(&format!(
        "INSERT INTO audit_checkpoints (chain, seq, hash, pruned_at, mac) VALUES ('{}', {}, '{}', {}, '{}')",
        cp.chain, cp.seq, cp.hash, cp.pruned_at, cp.mac
    ))
    .await;
    verify_service(app).await.unwrap();

    // The head row removed while its checkpoint stays.
    let heads = app.core.store.audit_heads().await.unwrap();
    let head = heads.iter().find(|h| h.chain == t.id).unwrap();
    app.raw_sql(&format!("DELETE FROM audit_heads WHERE chain = '{}'", t.id))
        .await;
    let (ok, out) = verify_cli(app);
    assert!(!ok && out.contains("head is missing"), "{out}");
    app.raw_sql(&format!(
        "INSERT INTO audit_heads (chain, seq, hash) VALUES ('{}', {}, '{}')",
        head.chain, head.seq, head.hash
    ))
    .await;
    verify_service(app).await.unwrap();

    // Deleting the first kept record (as a prune would, but without a new checkpoint).
    app.raw_sql(&format!(
        "DELETE FROM audit_events WHERE id = '{}'",
        first.id
    ))
    .await;
    let (ok, out) = verify_cli(app);
    assert!(!ok && out.contains(&second.id), "{out}");
}

async fn the_job_keeps_the_old_records_of_a_chain_that_does_not_verify(app: &TestApp) {
    let t = tenant_with_records(app).await;
    let before = app.audit_chain(&t.id).await;
    app.raw_sql(&format!(
        "UPDATE audit_events SET action = 'user.other' WHERE id = '{}'",
        before[1].id
    ))
    .await;
    app.clock.advance_seconds(400 * DAY);
    let r = run(&app.core, app).await;
    assert_eq!(r.refused_chains.len(), 1, "{r:?}");
    assert_eq!(r.refused_chains[0].0, t.id);
    assert_eq!(
        app.audit_chain(&t.id).await.len(),
        before.len(),
        "pruning would have hidden the edit"
    );
    assert!(
        r.counts.audit_chains >= 1,
        "the platform chain was still pruned: {r:?}"
    );
    let rec = app
        .audit_chain("platform")
        .await
        .into_iter()
        .rev()
        .find(|e| e.action == "retention.purge")
        .unwrap();
    assert_eq!(rec.outcome, "failure");
    assert!(
        rec.reason.as_deref().unwrap().ends_with("refused_chains=1"),
        "{rec:?}"
    );
    let (ok, out) = verify_cli(app);
    assert!(!ok && out.contains(&before[1].id), "still reported: {out}");
}

fn kasho(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(args)
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn kasho_retention_run_prints_the_counts_and_config_check_the_floor(app: &TestApp) {
    // Records made 400 days ago (the CLI runs on the wall clock).
    let now = app.clock_now();
    app.clock.set(now.plus_seconds(-400 * DAY));
    tenant_with_records(app).await;
    app.clock.set(now);
    let (ok, out) = kasho(
        app,
        &["retention", "run"],
        &[("KASHO_AUDIT_RETENTION_DAYS", "30")],
    );
    assert!(ok, "{out}");
    assert!(out.contains("below the 366-day minimum"), "{out}");
    assert!(
        line_of(&out, "audit records") > 0 && line_of(&out, "audit records") != u64::MAX,
        "{out}"
    );
    assert!(
        (2..u64::MAX).contains(&line_of(&out, "sessions")),
        "the sessions of 400 days ago: {out}"
    );
    assert_eq!(line_of(&out, "reset tokens"), 0, "{out}");
    assert_eq!(line_of(&out, "outbox messages"), 0, "{out}");
    let (ok, out) = verify_cli(app);
    assert!(ok, "{out}");
    // A second run finds nothing left to purge.
    let (ok, out) = kasho(app, &["retention", "run"], &[]);
    assert!(ok, "{out}");
    assert_eq!(line_of(&out, "audit records"), 0, "{out}");

    let (ok, out) = kasho(
        app,
        &["config", "check"],
        &[("KASHO_AUDIT_RETENTION_DAYS", "1")],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("KASHO_AUDIT_RETENTION_DAYS") && out.contains("kept 366 days"),
        "{out}"
    );
    let (ok, out) = kasho(
        app,
        &["config", "check"],
        &[("KASHO_SESSION_RETENTION_DAYS", "0")],
    );
    assert!(!ok);
    assert!(
        out.contains("`session_retention_days`") && out.contains("KASHO_SESSION_RETENTION_DAYS"),
        "{out}"
    );
}

/// The count printed on the line that starts with `name` (`u64::MAX` when there is none).
fn line_of(out: &str, name: &str) -> u64 {
    out.lines()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.trim_start()[name.len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

backend_tests!(
    processing_records_are_published_to_compliance_roles_only,
    the_job_purges_ended_sessions_and_spent_keys_but_nothing_live,
    audit_records_younger_than_twelve_months_survive_a_one_day_retention,
    tampering_after_pruning_is_detected,
    a_young_record_stops_the_prune_even_ahead_of_older_ones,
    the_job_keeps_the_old_records_of_a_chain_that_does_not_verify,
    kasho_retention_run_prints_the_counts_and_config_check_the_floor,
);
