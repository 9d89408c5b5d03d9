//! Issue 14, items 1, 2 and 10: the root key is proven against the database before anything
//! is written; keys are generated only for a database that holds none; `rotate-master` with a
//! wrong key changes nothing, and never retires a master key version that still wraps a data
//! key; blind-index keys have no budget, rotate only when asked, and every instance follows an
//! index rotation at once.

use std::process::Command;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kasho::config::Config;
use kasho::crypto::keys::MasterKey;
use kasho::service::keys::{KeyOwner, Keyring};
use serde_json::json;

use crate::backend_tests;
use crate::support::{
    Backend, GENEROUS_LIMITS, Resp, TenantFixture, TestApp, customer_account, send_to,
};

/// The test configuration on the app's database, with `extra` on top (a data directory of its
/// own, another key...).
fn config(app: &TestApp, data_dir: &str, extra: &[(&str, &str)]) -> Config {
    let mut pairs: Vec<(&str, &str)> = vec![
        ("data_dir", data_dir),
        ("database_url", app.database_url.as_str()),
        ("database_max_connections", "2"),
        ("argon2_memory_kib", "64"),
        ("argon2_iterations", "1"),
        ("mfa_required_roles", ""),
    ];
    pairs.extend_from_slice(GENEROUS_LIMITS);
    pairs.extend_from_slice(extra);
    Config::from_pairs(&pairs).expect("config")
}

fn jwt_pem(app: &TestApp) -> String {
    std::fs::read_to_string(app.data_dir.path().join("keys").join("jwt-signing-key.pem"))
        .expect("the test app's JWT key")
}

fn other_master_key() -> String {
    MasterKey::generate().unwrap().to_base64().to_string()
}

/// `kasho <args>` on the app's database and data directory, with `env` set.
fn kasho(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kasho"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run kasho");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Why the server refused to start with `cfg` (empty if it started).
async fn start_error(app: &TestApp, cfg: &Config) -> String {
    kasho::app::build_core(cfg, app.core.clock.clone(), true)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// Everything a start could have written: audit records, key rows, the check row, migrations.
async fn footprint(app: &TestApp) -> Vec<String> {
    let mut all = Vec::new();
    for sql in [
        "SELECT CAST(COUNT(*) AS TEXT) FROM audit_events",
        "SELECT CAST(version AS TEXT) || ':' || status || ':' || root_id FROM master_keys ORDER BY version",
        "SELECT id || ':' || CAST(version AS TEXT) || ':' || status || ':' || CAST(kek_version AS TEXT) FROM data_keys ORDER BY id, version",
        "SELECT root_id || ':' || check_value || ':' || jwt_kid FROM root_key_check",
        "SELECT CAST(COUNT(*) AS TEXT) FROM _sqlx_migrations",
    ] {
        all.extend(app.raw_strings(sql).await);
    }
    all
}

async fn customer_with_email(app: &TestApp, t: &TenantFixture, email: &str) -> String {
    let r = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "first_name": "Ada", "last_name": "Obi", "email": email }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.body["id"].as_str().unwrap().to_owned()
}

fn search_request(email: &str, token: &str) -> Request<Body> {
    Request::builder()
        .uri(format!("/v1/customers?email={email}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

fn found(r: &Resp) -> Vec<String> {
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------ item 1: the root key proof

async fn a_database_opened_with_another_root_key_refuses_before_writing(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    customer_with_email(app, &t, "ada@example.com").await;
    let before = footprint(app).await;
    assert!(
        before.iter().any(|r| r.contains(':')),
        "the check row is recorded at the first start: {before:?}"
    );
    let wrong = other_master_key();
    let pem = jwt_pem(app);
    let dir = app.data_dir.path().display().to_string();
    let cfg = config(
        app,
        &dir,
        &[("master_key", &wrong), ("jwt_signing_key", &pem)],
    );
    // The server's start and the CLI's commands open the database through the same function.
    let err = start_error(app, &cfg).await;
    assert!(err.contains("wrong master key"), "{err}");
    let err = kasho::app::open_database(&cfg, kasho::app::Opening::Migrate, false, 0)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("wrong master key"), "{err}");
    // The commands, from the command line.
    let env = [("KASHO_MASTER_KEY", wrong.as_str())];
    for args in [
        &["keys", "status"][..],
        &["keys", "rotate-master"],
        &["audit", "verify"],
        &["migrate"],
        &["retention", "run"],
    ] {
        let (ok, out) = kasho(app, args, &env);
        assert!(!ok, "{args:?}: {out}");
        assert!(out.contains("wrong master key"), "{args:?}: {out}");
        assert!(!out.contains("TAMPERED"), "{args:?}: {out}");
    }
    assert_eq!(footprint(app).await, before, "nothing was written");
    // The right key still works.
    let (ok, out) = kasho(app, &["audit", "verify"], &[]);
    assert!(ok, "{out}");
}

async fn a_database_from_before_the_check_is_proven_by_its_master_key_and_audit_seal(
    app: &TestApp,
) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    customer_with_email(app, &t, "ada@example.com").await;
    // A database created before the check row existed.
    app.raw_sql("DELETE FROM root_key_check").await;
    let dir = app.data_dir.path().display().to_string();
    let pem = jwt_pem(app);
    let wrong = other_master_key();
    let cfg = config(
        app,
        &dir,
        &[("master_key", &wrong), ("jwt_signing_key", &pem)],
    );
    let err = start_error(app, &cfg).await;
    assert!(err.contains("wrong master key"), "{err}");
    assert!(
        app.raw_strings("SELECT root_id FROM root_key_check")
            .await
            .is_empty(),
        "a wrong key records nothing"
    );
    // Only audit records to go by (no master key version yet): their seal decides.
    app.raw_sql("DELETE FROM data_keys").await;
    app.raw_sql("DELETE FROM master_keys").await;
    let err = kasho::app::build_core(&cfg, app.core.clock.clone(), false)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("audit chain"), "{err}");
    // The right key records the check at its first start.
    let (_core, _router) = app.instance_with(&[]).await;
    assert_eq!(
        app.raw_strings("SELECT jwt_kid FROM root_key_check")
            .await
            .len(),
        1
    );
}

async fn development_never_generates_keys_for_a_database_that_has_them(app: &TestApp) {
    let admin = app.platform_admin().await;
    app.tenant(&admin, "acme").await;
    let before = footprint(app).await;
    // Another data directory (no keys in it) against the same database.
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = elsewhere.path().display().to_string();
    let cfg = config(app, &dir, &[]);
    let err = start_error(app, &cfg).await;
    assert!(err.contains("refusing to generate keys"), "{err}");
    // Only the JWT key missing is refused too: a new one would sign tokens no other instance
    // accepts.
    let with_master = config(
        app,
        &dir,
        &[(
            "master_key",
            &std::fs::read_to_string(app.data_dir.path().join("keys").join("master.key")).unwrap(),
        )],
    );
    let err = start_error(app, &with_master).await;
    assert!(err.contains("refusing to generate keys"), "{err}");
    assert!(
        !elsewhere.path().join("keys").join("master.key").exists()
            && !elsewhere
                .path()
                .join("keys")
                .join("jwt-signing-key.pem")
                .exists(),
        "no key was generated"
    );
    // A JWT key other than the database's is refused as well (tokens would not verify across
    // instances), until the operator adopts it on purpose.
    let other_jwt = kasho::crypto::keys::JwtSigningKey::generate().unwrap();
    let other_pem = other_jwt.to_pem().to_string();
    let cfg = config(
        app,
        &app.data_dir.path().display().to_string(),
        &[("jwt_signing_key", &other_pem)],
    );
    let err = start_error(app, &cfg).await;
    assert!(err.contains("wrong JWT signing key"), "{err}");
    assert_eq!(footprint(app).await, before, "nothing was written");
    // Replaced on purpose: the operator adopts it, and it starts.
    let (ok, out) = kasho(
        app,
        &["keys", "adopt-jwt-key"],
        &[("KASHO_JWT_SIGNING_KEY", &other_pem)],
    );
    assert!(ok, "{out}");
    assert!(
        kasho::app::build_core(&cfg, app.core.clock.clone(), true)
            .await
            .is_ok()
    );
    assert!(
        app.audit_chain("platform")
            .await
            .iter()
            .any(|e| e.action == "key.jwt.adopt")
    );
}

async fn rotate_master_with_a_wrong_key_changes_nothing(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    customer_with_email(app, &t, "ada@example.com").await;
    let before = footprint(app).await;
    // From the command line, the start proof refuses.
    let wrong = other_master_key();
    let (ok, out) = kasho(
        app,
        &["keys", "rotate-master"],
        &[("KASHO_MASTER_KEY", &wrong)],
    );
    assert!(!ok && out.contains("wrong master key"), "{out}");
    // A keyring built around the proof (as a caller of the library might): the rotation opens
    // the active master key version before it changes anything.
    let keyring = Keyring::new(
        app.core.store.clone(),
        app.core.clock.clone(),
        &MasterKey::from_base64(&wrong).unwrap(),
        1 << 30,
    );
    assert!(keyring.rotate_master(&|_, _| {}).await.is_err());
    assert_eq!(footprint(app).await, before, "nothing changed");
    // The old key still works: new personal data is sealed, old is read.
    let id = customer_with_email(app, &t, "bea@example.com").await;
    let r = app
        .get(
            &format!("/v1/customers/{id}?unmasked=true"),
            &t.manager_token,
        )
        .await;
    assert_eq!(r.body["email"], "bea@example.com", "{r:?}");
    let (ok, out) = kasho(app, &["keys", "rotate-master"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("rotated to master key version 2"), "{out}");
}

// ------------------------------------------------------------------ item 10

async fn a_data_key_wrapped_under_a_retiring_master_never_lets_it_retire(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let account = customer_account(app, &t, "USD").await;
    let tenant = kasho::ids::TenantId::from_trusted(t.id.clone());
    // A data key wrapped under master v1 whose insert has not happened yet (a creation that
    // read the active master key just before a rotation): its genuine row, held back.
    let late = app
        .core
        .keyring
        .encryption_key(&tenant, &KeyOwner::Customer("cus_late".into()), 0)
        .await
        .unwrap();
    let record = app
        .core
        .store
        .data_key(&late.id, late.version)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.kek_version, 1);
    app.raw_sql(&format!("DELETE FROM data_keys WHERE id = '{}'", late.id))
        .await;
    // A rotation adds v2 (v1 retiring) and is interrupted before it rewraps anything.
    let keyring = app.core.keyring.clone();
    let died = tokio::spawn(async move {
        keyring
            .rotate_master(&|_, _| panic!("interrupted before the rewrap"))
            .await
    })
    .await;
    assert!(died.is_err());
    // The late insert under v1 is refused: it would be wrapped under a version on its way out.
    let inserted = app
        .core
        .store
        .insert_data_key(&record, None, &[])
        .await
        .unwrap();
    assert!(!inserted, "a data key wrapped under a retiring master key");
    // Had it got in (an older binary), retirement re-checks in its own transaction.
    app.raw_sql(&format!(
        "INSERT INTO data_keys (id, version, tenant_id, owner, kek_version, wrapped, status, encryptions, created_at) \
         VALUES ('{}', 1, '{}', '{}', 1, '{}', 'active', 0, 0)",
        record.id,
        record.tenant_id,
        record.owner,
        record.wrapped.clone().unwrap()
    ))
    .await;
    let retired = app
        .core
        .store
        .retire_master_key(1, app.clock_now(), &[])
        .await
        .unwrap();
    assert!(!retired, "v1 still wraps a data key");
    // The rotation then finishes: everything rewrapped, v1 retired, the late key readable.
    let r = app.core.keyring.rotate_master(&|_, _| {}).await.unwrap();
    assert_eq!(r.retired, vec![1], "{r:?}");
    assert!(r.still_retiring.is_empty(), "{r:?}");
    let wrapped_by_retired = app
        .raw_strings(
            "SELECT d.id FROM data_keys d JOIN master_keys m ON m.version = d.kek_version \
             WHERE m.status <> 'active' AND d.wrapped IS NOT NULL",
        )
        .await;
    assert!(wrapped_by_retired.is_empty(), "{wrapped_by_retired:?}");
    app.clock
        .advance_seconds(kasho::service::keys::RETIREMENT_GRACE_SECONDS + 1);
    app.core.keyring.run_pending().await.unwrap();
    let fresh = app.instance_with(&[]).await.0;
    let reopened = fresh
        .keyring
        .encryption_key(&tenant, &KeyOwner::Customer("cus_late".into()), 1)
        .await
        .unwrap();
    assert_eq!(
        reopened.key.expose(),
        late.key.expose(),
        "the late key still opens"
    );
    let d = app
        .post(
            "/v1/deposits",
            Some(&t.manager_token),
            json!({ "account_id": account, "amount": 5, "currency": "USD", "description": "after" }),
        )
        .await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:?}");
}

// ------------------------------------------------------------------ item 2: index keys

async fn restarts_with_a_tiny_budget_never_change_the_index_key(backend: Backend) {
    let tiny = [("key_rotate_after_encryptions", "2")];
    let app = TestApp::with_config(backend, &tiny).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let id = customer_with_email(&app, &t, "ada@example.com").await;
    // Ten restarts, each searching at once (the first use of the index key in a process).
    for restart in 0..10 {
        let (_core, router) = app.instance_with(&tiny).await;
        let r = send_to(&router, search_request("ada@example.com", &t.manager_token)).await;
        assert_eq!(found(&r), vec![id.clone()], "restart {restart}");
    }
    let index = app
        .raw_strings(&format!(
            "SELECT CAST(version AS TEXT) || ':' || status || ':' || CAST(encryptions AS TEXT) \
             FROM data_keys WHERE tenant_id = '{}' AND owner = 'index'",
            t.id
        ))
        .await;
    assert_eq!(
        index,
        vec!["1:active:0"],
        "the index key is no encryption key"
    );
    // Meanwhile the tenant's encryption key did run through its budget, and `keys status`
    // shows every version, spent ones included.
    for i in 0..4 {
        customer_with_email(&app, &t, &format!("c{i}@example.com")).await;
    }
    let a = customer_account(&app, &t, "USD").await;
    for i in 0..6 {
        let d = app
            .post(
                "/v1/deposits",
                Some(&t.manager_token),
                json!({ "account_id": a, "amount": 1, "currency": "USD", "description": format!("d{i}") }),
            )
            .await;
        assert_eq!(d.status, StatusCode::CREATED, "{d:?}");
    }
    let (ok, out) = kasho(&app, &["keys", "status"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("tenant): spent;"), "{out}");
    assert!(out.contains("index): active;"), "{out}");
    assert!(!out.contains("data keys spent: 0"), "{out}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_a_tiny_budget_never_change_the_index_key_sqlite() {
    restarts_with_a_tiny_budget_never_change_the_index_key(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_a_tiny_budget_never_change_the_index_key_postgres() {
    restarts_with_a_tiny_budget_never_change_the_index_key(Backend::Postgres).await;
}

async fn an_index_rotation_keeps_search_working_on_every_instance(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(customer_with_email(app, &t, &format!("c{i}@example.com")).await);
    }
    let second = app.second_instance().await;
    // The second instance has used (and cached) the index key.
    let r = send_to(&second, search_request("c0@example.com", &t.manager_token)).await;
    assert_eq!(found(&r), vec![ids[0].clone()]);
    // A rotation starts on this instance: until it finishes, both versions are live, and a
    // customer created on the second instance meanwhile is indexed under both.
    let tenant = kasho::ids::TenantId::from_trusted(t.id.clone());
    let (version, resumed) = app
        .core
        .keyring
        .start_index_rotation(&tenant)
        .await
        .unwrap();
    assert_eq!((version, resumed), (2, false));
    let r = send_to(&second, search_request("c1@example.com", &t.manager_token)).await;
    assert_eq!(found(&r), vec![ids[1].clone()], "found mid-rotation");
    let r = send_to(
        &second,
        crate::support::TestApp::post_request(
            "/v1/customers",
            Some(&t.manager_token),
            &json!({ "first_name": "Mid", "last_name": "Way", "email": "mid@example.com" }),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let mid = r.body["id"].as_str().unwrap().to_owned();
    // The operator's command finishes it (resuming), re-indexing everyone before the switch.
    let (ok, out) = kasho(app, &["keys", "rotate-index", "--tenant", "acme"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("resumed rotation to index key version 2")
            && out.contains("retired versions: [1]"),
        "{out}"
    );
    // Every instance finds every customer right away, by the new version only.
    for (i, id) in ids.iter().enumerate() {
        let email = format!("c{i}@example.com");
        let r = send_to(&second, search_request(&email, &t.manager_token)).await;
        assert_eq!(
            found(&r),
            vec![id.clone()],
            "{email} on the second instance"
        );
        let r = app.send(search_request(&email, &t.manager_token)).await;
        assert_eq!(found(&r), vec![id.clone()], "{email} on the first instance");
    }
    let r = app
        .send(search_request("mid@example.com", &t.manager_token))
        .await;
    assert_eq!(found(&r), vec![mid]);
    let versions = app
        .raw_strings(&format!(
            "SELECT CAST(version AS TEXT) || ':' || status FROM data_keys \
             WHERE tenant_id = '{}' AND owner = 'index' ORDER BY version",
            t.id
        ))
        .await;
    assert_eq!(versions, vec!["1:retired", "2:active"]);
    let stale = app
        .raw_strings(&format!(
            "SELECT digest FROM customer_lookup WHERE tenant_id = '{}' AND (index_version IS NULL OR index_version <> 2)",
            t.id
        ))
        .await;
    assert!(stale.is_empty(), "old digests are gone: {stale:?}");
    // A new customer created after the switch, on the second instance, is found on the first.
    let r = send_to(
        &second,
        crate::support::TestApp::post_request(
            "/v1/customers",
            Some(&t.manager_token),
            &json!({ "first_name": "Late", "last_name": "Comer", "email": "late@example.com" }),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = app
        .send(search_request("late@example.com", &t.manager_token))
        .await;
    assert_eq!(found(&r).len(), 1);
}

backend_tests!(
    a_database_opened_with_another_root_key_refuses_before_writing,
    a_database_from_before_the_check_is_proven_by_its_master_key_and_audit_seal,
    development_never_generates_keys_for_a_database_that_has_them,
    rotate_master_with_a_wrong_key_changes_nothing,
    a_data_key_wrapped_under_a_retiring_master_never_lets_it_retire,
    an_index_rotation_keeps_search_working_on_every_instance,
);
