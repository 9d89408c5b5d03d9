//! Issue 14, items 8, 9 and 11 (records, throttle, retention): production refuses insecure
//! settings and `config check` lists every one; database files are private whatever the
//! directory and umask; passwords are read without echo and secrets never come as arguments;
//! the records of processing cover every table; throttle keys are keyed hashes; financial
//! records are kept five years.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use serde_json::json;

use crate::backend_tests;
use crate::support::{Backend, PASSWORD, TenantFixture, TestApp};

const DAY: i64 = 86_400;

fn kasho() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kasho"));
    cmd.env("KASHO_LOG_LEVEL", "error")
        .env_remove("KASHO_DATABASE_URL")
        .env_remove("KASHO_ENV");
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Item 8: production refuses insecure settings, and `config check` lists them all.

/// Everything the reviewer found, at once: development keys from the data directory, a key
/// file readable by others, no platform-admin MFA, trust lists of the whole internet, an open
/// metrics listener and a database password on the command line.
fn insecure(app: &TestApp, cmd: &mut Command) {
    let keys = app.data_dir.path().join("keys");
    // The master key handed over in a file anyone may read; the JWT key left where development
    // generated it (not configured at all).
    let loose = app.data_dir.path().join("master-key-copy");
    std::fs::copy(keys.join("master.key"), &loose).unwrap();
    set_mode(&loose, 0o644);
    cmd.arg("--data-dir")
        .arg(app.data_dir.path())
        .args([
            "--database-url",
            "postgres://kasho:not-for-ps-eyes@127.0.0.1:1/kasho",
        ])
        .args(["--env", "production"])
        .env("KASHO_MASTER_KEY_FILE", &loose)
        .env("KASHO_PUBLIC_URL", "https://pay.example.com")
        .env("KASHO_MFA_REQUIRED_ROLES", "")
        .env("KASHO_TRUSTED_PROXIES", "10.0.0.0/8,0.0.0.0/0")
        .env("KASHO_INTRUSION_EXEMPT", "::/0")
        .env("KASHO_METRICS_LISTEN", "0.0.0.0:9464");
}

async fn config_check_in_production_lists_every_insecure_setting(app: &TestApp) {
    let mut cmd = kasho();
    cmd.args(["config", "check"]);
    insecure(app, &mut cmd);
    let (ok, stdout, stderr) = run(&mut cmd);
    assert!(!ok, "{stdout}{stderr}");
    assert!(!stdout.contains("configuration OK"), "{stdout}");
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("REFUSED: "))
        .collect();
    for (key, fix) in [
        ("`jwt_signing_key`", "KASHO_JWT_SIGNING_KEY_FILE"),
        ("`master_key`", "chmod 600"),
        ("`mfa_required_roles`", "PLATFORM_ADMIN"),
        ("`trusted_proxies`", "0.0.0.0/0"),
        ("`intrusion_exempt`", "::/0"),
        ("plain HTTP", "KASHO_ALLOW_PLAIN_HTTP"),
    ] {
        assert!(
            refused.iter().any(|l| l.contains(key) && l.contains(fix)),
            "{key} / {fix} not refused: {stderr}"
        );
    }
    let jwt = refused
        .iter()
        .find(|l| l.contains("`jwt_signing_key`"))
        .unwrap();
    assert!(jwt.contains("development key"), "{jwt}");
    let master = refused.iter().find(|l| l.contains("`master_key`")).unwrap();
    assert!(
        master.contains("KASHO_MASTER_KEY_FILE") && master.contains("0644"),
        "{master}"
    );
    assert!(
        !refused.iter().any(|l| l.contains("10.0.0.0/8")),
        "a private /8 of proxies is fine: {stderr}"
    );
    // The two warnings: named, with their fix, and the password never shown.
    for (key, fix) in [
        ("`metrics_listen`", "127.0.0.1"),
        ("`database_url`", "KASHO_DATABASE_URL_FILE"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("WARNING: ") && l.contains(key) && l.contains(fix)),
            "{key}: {stderr}"
        );
    }
    assert!(
        !format!("{stdout}{stderr}").contains("not-for-ps-eyes"),
        "{stdout}{stderr}"
    );
    assert!(
        stderr.contains("configuration refused: 6 problems"),
        "{stderr}"
    );

    // Fixed, the same check passes (the warnings stay warnings).
    let keys = app.data_dir.path().join("keys");
    let (ok, stdout, stderr) = run(kasho()
        .args(["config", "check", "--env", "production", "--data-dir"])
        .arg(app.data_dir.path())
        .env("KASHO_DATABASE_URL", &app.database_url)
        .env(
            "KASHO_JWT_SIGNING_KEY_FILE",
            keys.join("jwt-signing-key.pem"),
        )
        .env("KASHO_MASTER_KEY_FILE", keys.join("master.key"))
        .env("KASHO_PUBLIC_URL", "https://pay.example.com")
        .env("KASHO_ALLOW_PLAIN_HTTP", "true")
        .env("KASHO_TRUSTED_PROXIES", "10.0.0.0/8,2001:db8::/32")
        .env("KASHO_INTRUSION_EXEMPT", "192.0.2.7")
        .env("KASHO_METRICS_LISTEN", "127.0.0.1:9464"));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
}

async fn production_commands_refuse_insecure_settings_naming_each(app: &TestApp) {
    // `serve` stops before it listens; so does every other command that opens the database.
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["migrate"][..],
        &["audit", "verify"][..],
    ] {
        let mut cmd = kasho();
        cmd.args(args);
        insecure(app, &mut cmd);
        let (ok, stdout, stderr) = run(&mut cmd);
        assert!(!ok, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("production refuses 5 insecure settings"),
            "{args:?}: {stderr}"
        );
        for key in [
            "`jwt_signing_key`",
            "`master_key`",
            "`mfa_required_roles`",
            "`trusted_proxies`",
            "`intrusion_exempt`",
        ] {
            assert!(stderr.contains(key), "{args:?}: {key}: {stderr}");
        }
        assert!(!stderr.contains("not-for-ps-eyes"), "{stderr}");
    }
    // Development takes the same settings, warning only about the password on the command
    // line (which it cannot use here: nothing listens on port 1).
    let (ok, _, stderr) = run(kasho()
        .args(["config", "check", "--data-dir"])
        .arg(app.data_dir.path())
        .args([
            "--database-url",
            "postgres://kasho:not-for-ps-eyes@127.0.0.1:1/kasho",
        ])
        .env("KASHO_MFA_REQUIRED_ROLES", "")
        .env("KASHO_TRUSTED_PROXIES", "0.0.0.0/0"));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("WARNING: `database_url` (from flag --database-url)")
            && !stderr.contains("not-for-ps-eyes"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 9: files and terminals.

/// Every file under `dir` that group or others may access.
fn loose_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(loose_files(&path));
        } else if mode(&path) & 0o077 != 0 {
            out.push(format!("{} {:04o}", path.display(), mode(&path)));
        }
    }
    out
}

/// SQLite only: the embedded database in a data directory that already existed (mode 0755),
/// under a umask that grants everyone everything, and a database file an older version left
/// readable by all.
#[test]
fn database_files_are_private_whatever_the_directory_and_umask() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("kasho-data");
    std::fs::create_dir(&data).unwrap();
    set_mode(&data, 0o755);
    let migrate = |data: &Path| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask 000 && exec '{}' migrate --data-dir '{}'",
                env!("CARGO_BIN_EXE_kasho"),
                data.display()
            ))
            .env("KASHO_LOG_LEVEL", "error")
            .env_remove("KASHO_DATABASE_URL")
            .env_remove("KASHO_ENV")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    migrate(&data);
    assert!(data.join("kasho.db").exists());
    assert_eq!(mode(&data.join("kasho.db")), 0o600);
    assert!(loose_files(&data).is_empty(), "{:?}", loose_files(&data));

    // A database (and any WAL or shared memory left) an earlier version wrote readable by all
    // is narrowed on open.
    for f in ["kasho.db", "kasho.db-wal", "kasho.db-shm"] {
        if data.join(f).exists() {
            set_mode(&data.join(f), 0o666);
        }
    }
    assert!(!loose_files(&data).is_empty());
    migrate(&data);
    assert!(loose_files(&data).is_empty(), "{:?}", loose_files(&data));
}

/// SQLite only: while the server runs, its WAL and shared-memory files are as private as the
/// database.
#[tokio::test]
async fn the_live_wal_and_shared_memory_files_are_private() {
    let app = TestApp::new(Backend::Sqlite).await;
    let admin = app.platform_admin().await;
    app.tenant(&admin, "acme").await;
    let dir = app.data_dir.path();
    for f in ["kasho.db", "kasho.db-wal", "kasho.db-shm"] {
        let p = dir.join(f);
        assert!(p.exists(), "{f}");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    assert!(loose_files(dir).is_empty(), "{:?}", loose_files(dir));
    app.cleanup().await;
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `admin create-platform-admin` on a real terminal (a pseudo-terminal made by `script`): the
/// password typed is not echoed back, and it is the one the admin signs in with.
async fn the_platform_admin_password_is_not_echoed_on_a_terminal(app: &TestApp) {
    if Command::new("script").arg("--version").output().is_err() {
        // Never skipped quietly in CI: util-linux is part of every CI image.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`script` (util-linux) is needed for a pseudo-terminal"
        );
        eprintln!("skipped: `script` (util-linux) is needed for a pseudo-terminal");
        return;
    }
    let typed = "typed at a terminal 7781";
    let inner = format!(
        "{} admin create-platform-admin --email tty@platform.test --data-dir {} --database-url {}",
        sh_quote(env!("CARGO_BIN_EXE_kasho")),
        sh_quote(&app.data_dir.path().display().to_string()),
        sh_quote(&app.database_url),
    );
    let mut child = Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env("KASHO_LOG_LEVEL", "error")
        .env("KASHO_ARGON2_MEMORY_KIB", "64")
        .env("KASHO_ARGON2_ITERATIONS", "1")
        .env("KASHO_MFA_REQUIRED_ROLES", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Wait for the prompt, then type.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("password") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    stdin.write_all(format!("{typed}\n").as_bytes()).unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    seen.extend_from_slice(&rest);
    let status = child.wait().unwrap();
    let shown = String::from_utf8_lossy(&seen);
    assert!(status.success(), "{shown}");
    assert!(shown.contains("created platform admin usr_"), "{shown}");
    assert!(!shown.contains(typed), "the password was echoed: {shown}");
    let r = app.login(None, "tty@platform.test", typed).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    // Piped in (the README's way), it still works.
    let mut child = kasho()
        .args([
            "admin",
            "create-platform-admin",
            "--email",
            "pipe@platform.test",
        ])
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .args(["--database-url", &app.database_url])
        .env("KASHO_ARGON2_MEMORY_KIB", "64")
        .env("KASHO_ARGON2_ITERATIONS", "1")
        .env("KASHO_MFA_REQUIRED_ROLES", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = app.login(None, "pipe@platform.test", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

/// The documented test vector's secret (docs/API.md).
const DOC_SECRET: &str = "kasho_sig_Zm9yIGRvY3VtZW50YXRpb24gb25seSwgbmV2ZXIgdXNl";

fn sign(secret_args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = kasho()
        .arg("sign")
        .args(secret_args)
        .args([
            "--method",
            "post",
            "--path",
            "/v1/transfers",
            "--query",
            "b=2&a=1&a=0&q=x+y%2Bz",
            "--body",
            r#"{"from_account":"acc_1","to_account":"acc_2","amount":1500,"currency":"USD"}"#,
            "--timestamp",
            "1767225600",
            "--nonce",
            "3f9a1c0e7b2d4a68",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
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

#[test]
fn kasho_sign_takes_secrets_from_the_environment_a_file_or_stdin_never_an_argument() {
    const SIGNATURE: &str =
        "Kasho-Signature: v1=9f1bdb0745fa66d14894bf22059fcf3b75acf6fcd7cb49fe7b5b3022121041ab";
    let (ok, out) = sign(&["--secret", DOC_SECRET], None);
    assert!(!ok, "{out}");
    assert!(
        out.contains("--secret is refused")
            && out.contains("--secret-env")
            && out.contains("--secret-file")
            && out.contains("--secret-stdin")
            && !out.contains("Kasho-Signature"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing-secret");
    std::fs::write(&file, format!("{DOC_SECRET}\n")).unwrap();
    let (ok, out) = sign(&["--secret-file", &file.display().to_string()], None);
    assert!(ok && out.contains(SIGNATURE), "{out}");
    let (ok, out) = sign(&["--secret-stdin"], Some(&format!("{DOC_SECRET}\n")));
    assert!(ok && out.contains(SIGNATURE), "{out}");
    assert!(!out.contains(DOC_SECRET), "never printed: {out}");
}

// ---------------------------------------------------------------------------------------------
// Item 11: records of processing, throttle keys, financial retention.

/// Every table of the schema the migrations built (this backend's) is covered by a record of
/// processing or declared to hold no personal data.
async fn the_records_of_processing_cover_every_table_of_the_schema(app: &TestApp) {
    use kasho::domain::processing::{REGISTRY, TABLES_WITHOUT_PERSONAL_DATA};
    let tables = match app.backend {
        Backend::Sqlite => {
            app.raw_strings(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .await
        }
        Backend::Postgres => {
            app.raw_strings(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .await
        }
    };
    assert!(tables.len() > 30, "{tables:?}");
    let covered: Vec<&str> = REGISTRY
        .iter()
        .flat_map(|r| r.storage.iter())
        .map(|s| s.split('.').next().unwrap_or(s))
        .collect();
    let exempt: Vec<&str> = TABLES_WITHOUT_PERSONAL_DATA.iter().map(|t| t.0).collect();
    let missing: Vec<&String> = tables
        .iter()
        .filter(|t| !covered.contains(&t.as_str()) && !exempt.contains(&t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "tables holding personal or security data with no record of processing (add one to \
         domain::processing::REGISTRY, or, if it holds none, to TABLES_WITHOUT_PERSONAL_DATA \
         with the reason): {missing:?}"
    );
    // And nothing declared is a table that does not exist.
    for name in covered.iter().chain(exempt.iter()) {
        assert!(
            *name == "standard error" || tables.iter().any(|t| t == name),
            "`{name}` is declared but not a table"
        );
    }
    // The tables the review found missing are covered now.
    for t in [
        "mfa_challenges",
        "mfa_totp",
        "mfa_recovery_codes",
        "login_throttle",
        "security_alerts",
        "mail_outbox",
        "password_history",
    ] {
        assert!(covered.contains(&t), "{t}");
    }
}

/// The failure counter of an account is keyed by an HMAC under a key derived from the master
/// key: the table alone does not confirm a guessed tenant and email.
async fn sign_in_throttle_keys_are_keyed_hashes(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let email = "victim@acme.test";
    let r = app.login(Some("acme"), email, "wrong password!!").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let keys = app
        .raw_strings("SELECT key FROM login_throttle WHERE key LIKE 'acct:%'")
        .await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let unkeyed = format!(
        "acct:{}",
        kasho::crypto::sha256_hex(format!("{}\u{0}{email}", t.id).as_bytes())
    );
    assert_ne!(keys[0], unkeyed, "guessable by hashing tenant and email");
    // It is the HMAC under the master key's `login-throttle/v1` key.
    let b64 = std::fs::read_to_string(app.data_dir.path().join("keys/master.key")).unwrap();
    let master = kasho::crypto::keys::MasterKey::from_base64(&b64).unwrap();
    let key = master.derive("login-throttle/v1");
    let expected = format!(
        "acct:{}",
        hex_encode(&kasho::crypto::hmac_sha256(
            &key,
            format!("{}\u{0}{email}", t.id).as_bytes()
        ))
    );
    assert_eq!(keys[0], expected);
    // A second instance over the same database counts under the same key.
    let (_, other) = app.instance_with(&[]).await;
    let body =
        json!({ "tenant": "acme", "email": "VICTIM@acme.test", "password": "wrong again!!" });
    let req = axum::http::Request::post("/v1/auth/login")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let r = crate::support::send_to(&other, req).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let failures = app
        .raw_strings(&format!(
            "SELECT CAST(failures AS TEXT) FROM login_throttle WHERE key = '{expected}'"
        ))
        .await;
    assert_eq!(failures, ["2"]);
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn money(app: &TestApp, t: &TenantFixture) -> (String, String) {
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
    let account = a.body["id"].as_str().unwrap().to_owned();
    let d = app
        .post(
            "/v1/deposits",
            Some(&t.manager_token),
            json!({ "account_id": account, "amount": 5000, "currency": "USD" }),
        )
        .await;
    assert!(d.status.is_success(), "{d:?}");
    let h = app
        .post(
            "/v1/holds",
            Some(&t.manager_token),
            json!({ "account_id": account, "amount": 700, "currency": "USD", "expires_in_seconds": 600 }),
        )
        .await;
    assert_eq!(h.status, StatusCode::CREATED, "{h:?}");
    (account, h.body["id"].as_str().unwrap().to_owned())
}

/// The audit records of money movements outlive the (13-month) audit retention: they are kept
/// five years, and the ledger's own rows can never be deleted.
async fn financial_records_are_kept_five_years(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (account, hold) = money(app, &t).await;
    let financial = |records: &[kasho::domain::audit::AuditRecord]| -> Vec<String> {
        records
            .iter()
            .filter(|e| {
                kasho::domain::processing::FINANCIAL_AUDIT_ACTIONS.contains(&e.action.as_str())
            })
            .map(|e| e.action.clone())
            .collect()
    };
    let before = financial(&app.audit_chain(&t.id).await);
    for action in ["account.open", "deposit.create", "hold.create"] {
        assert!(before.iter().any(|a| a == action), "{action}: {before:?}");
    }

    // Two years on, well past the audit retention: the job runs, and keeps them.
    app.clock.advance_seconds(2 * 365 * DAY);
    let r = kasho::service::retention::run_once(&app.core, app.clock_now())
        .await
        .unwrap();
    assert!(r.refused_chains.is_empty(), "{r:?}");
    let after = financial(&app.audit_chain(&t.id).await);
    assert_eq!(
        after, before,
        "money movements' audit records pruned: {r:?}"
    );
    kasho::service::audit::verify_all(app.core.store.as_ref(), &app.core.sealer, |_| {}, |_| {})
        .await
        .unwrap();

    // Five years and three days on, they go like the rest.
    app.clock.advance_seconds((3 * 365 + 5) * DAY);
    let r = kasho::service::retention::run_once(&app.core, app.clock_now())
        .await
        .unwrap();
    assert!(r.counts.audit_events > 0, "{r:?}");
    assert!(financial(&app.audit_chain(&t.id).await).is_empty());
    kasho::service::audit::verify_all(app.core.store.as_ref(), &app.core.sealer, |_| {}, |_| {})
        .await
        .unwrap();

    // The ledger's rows: no deletion ever, whoever asks.
    for sql in [
        format!("DELETE FROM holds WHERE id = '{hold}'"),
        format!("DELETE FROM accounts WHERE id = '{account}'"),
        "DELETE FROM entries".to_owned(),
        "DELETE FROM transfers".to_owned(),
    ] {
        let e = app.try_raw_sql(&sql).await;
        assert!(e.is_err(), "{sql}: {e:?}");
    }
    let holds = app
        .raw_strings(&format!("SELECT id FROM holds WHERE id = '{hold}'"))
        .await;
    assert_eq!(holds.len(), 1);
}

backend_tests!(
    config_check_in_production_lists_every_insecure_setting,
    production_commands_refuse_insecure_settings_naming_each,
    the_platform_admin_password_is_not_echoed_on_a_terminal,
    the_records_of_processing_cover_every_table_of_the_schema,
    sign_in_throttle_keys_are_keyed_hashes,
    financial_records_are_kept_five_years,
);
