//! The `kasho` binary's commands, and PostgreSQL TLS.

use std::io::Write;
use std::process::{Command, Stdio};

use axum::http::StatusCode;

use crate::backend_tests;
use crate::support::{Backend, PASSWORD, TestApp};

fn kasho(app: &TestApp, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kasho"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error")
        .env("KASHO_ARGON2_MEMORY_KIB", "64")
        .env("KASHO_ARGON2_ITERATIONS", "1")
        .env("KASHO_MFA_REQUIRED_ROLES", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kasho");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn create_platform_admin_reads_the_password_from_stdin(app: &TestApp) {
    let (ok, out) = kasho(
        app,
        &[
            "admin",
            "create-platform-admin",
            "--email",
            "root@platform.test",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(ok, "{out}");
    assert!(out.contains("created platform admin usr_"), "{out}");
    let r = app.login(None, "root@platform.test", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let (ok, out) = kasho(
        app,
        &[
            "admin",
            "create-platform-admin",
            "--email",
            "root@platform.test",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = kasho(
        app,
        &[
            "admin",
            "create-platform-admin",
            "--email",
            "weak@platform.test",
        ],
        Some("short\n"),
    );
    assert!(!ok && out.contains("at least 12"), "{out}");
    // The same policy as every other way of setting a password: common ones are refused.
    let (ok, out) = kasho(
        app,
        &[
            "admin",
            "create-platform-admin",
            "--email",
            "common@platform.test",
        ],
        Some("Password123456!\n"),
    );
    assert!(!ok && out.contains("password_too_common"), "{out}");
    assert!(!out.contains("Password123456"), "{out}");
    assert!(
        app.audit_chain("platform")
            .await
            .iter()
            .any(|e| e.action == "platform_admin.create")
    );
}

async fn migrate_is_idempotent(app: &TestApp) {
    let (ok, out) = kasho(app, &["migrate"], None);
    assert!(ok, "{out}");
    assert!(out.contains("up to date"), "{out}");
}

async fn bad_configuration_names_the_key_and_its_source(app: &TestApp) {
    let (ok, out) = kasho(app, &["config", "check", "--env", "staging"], None);
    assert!(!ok);
    assert!(out.contains("`env`") && out.contains("flag --env"), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["config", "check"])
        .env("KASHO_LISTEN", "localhost-ish")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("`listen`") && text.contains("KASHO_LISTEN"),
        "{text}"
    );
}

async fn production_refuses_to_start_without_keys(app: &TestApp) {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["config", "check", "--env", "production", "--data-dir"])
        .arg(empty.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_LOG_LEVEL", "error")
        // Production needs an https public_url first (issue 13 item 17).
        .env("KASHO_PUBLIC_URL", "https://kasho.test")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("KASHO_JWT_SIGNING_KEY"), "{text}");
    assert!(
        !empty.path().join("keys").exists(),
        "nothing generated in production"
    );
}

/// PostgreSQL only: `sslmode` in the URL decides whether the connection is encrypted.
#[tokio::test]
async fn postgres_honours_sslmode() {
    let app = TestApp::new(Backend::Postgres).await;
    let url = format!("{}&sslmode=require", app.database_url);
    let store = kasho::store::postgres::PgStore::connect(
        &url,
        1,
        kasho::domain::audit::AuditSealer::new([0; 32]),
    )
    .await
    .expect("sslmode=require connects over TLS");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(ssl, "the connection is encrypted");
    let plain = format!("{}&sslmode=disable", app.database_url);
    let store = kasho::store::postgres::PgStore::connect(
        &plain,
        1,
        kasho::domain::audit::AuditSealer::new([0; 32]),
    )
    .await
    .unwrap();
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(!ssl, "sslmode=disable is honoured too");
    app.cleanup().await;
}

backend_tests!(
    create_platform_admin_reads_the_password_from_stdin,
    migrate_is_idempotent,
    bad_configuration_names_the_key_and_its_source,
    production_refuses_to_start_without_keys,
);
