//! Password reset by email, delivered through the durable outbox to a real SMTP server on
//! loopback (Python's aiosmtpd, installed with pip when missing: the tests fail, never skip,
//! if it cannot be), or to the mailbox folder when no SMTP server is configured.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use axum::http::StatusCode;
use kasho::service::mail::{self, DeliveryCounts};
use serde_json::json;

use crate::backend_tests;
use crate::support::{PASSWORD, Resp, TenantFixture, TestApp, free_port};

const SINK: &str = r#"
import os, sys, time
from aiosmtpd.controller import Controller

class Sink:
    async def handle_DATA(self, server, session, envelope):
        name = "%d-%d.eml" % (time.time_ns(), os.getpid())
        tmp = os.path.join(sys.argv[2], "." + name)
        with open(tmp, "wb") as f:
            f.write(("X-Envelope-To: %s\r\n" % ",".join(envelope.rcpt_tos)).encode())
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(sys.argv[2], name))
        return "250 OK"

c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("READY", flush=True)
sys.stdin.read()
c.stop()
"#;

/// Makes sure aiosmtpd can be imported, installing it once with pip if needed.
fn ensure_aiosmtpd() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        let importable = || {
            Command::new("python3")
                .args(["-c", "import aiosmtpd"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if importable() {
            return Ok(());
        }
        for extra in [&[][..], &["--user", "--break-system-packages"][..]] {
            let _ = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
                .args(extra)
                .status();
            if importable() {
                return Ok(());
            }
        }
        Err(
            "these tests deliver mail to a real SMTP server: Python 3 with aiosmtpd is required \
             and `python3 -m pip install aiosmtpd` failed; install it and run again"
                .to_owned(),
        )
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// An aiosmtpd server on loopback that writes each message it accepts into `dir`.
struct SmtpSink {
    child: Child,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start(port: u16) -> SmtpSink {
        ensure_aiosmtpd();
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("sink.py");
        std::fs::write(&script, SINK).expect("script");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).expect("inbox");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&inbox)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("aiosmtpd output");
        assert_eq!(
            line.trim(),
            "READY",
            "aiosmtpd did not start on port {port}"
        );
        SmtpSink { child, dir }
    }

    fn messages(&self) -> Vec<String> {
        read_eml(&self.dir.path().join("inbox"))
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_eml(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("eml"))
        .collect()
}

/// The token of the reset link in an email.
fn token_in(message: &str) -> String {
    let at = message.find("#token=").expect("a reset link") + "#token=".len();
    message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

async fn ask(app: &TestApp, tenant: &str, email: &str) -> Resp {
    app.post(
        "/v1/auth/password-reset",
        None,
        json!({ "tenant": tenant, "email": email }),
    )
    .await
}

async fn confirm(app: &TestApp, token: &str, new_password: &str) -> Resp {
    app.post(
        "/v1/auth/password-reset/confirm",
        None,
        json!({ "token": token, "new_password": new_password }),
    )
    .await
}

/// A core on the same database that delivers to the SMTP server on `port`.
async fn smtp_core(app: &TestApp, port: u16) -> std::sync::Arc<kasho::service::Core> {
    let url = format!("smtp://127.0.0.1:{port}");
    app.instance_with(&[("smtp_url", &url), ("mail_from", "no-reply@kasho.test")])
        .await
        .0
}

async fn deliver(core: &kasho::service::Core) -> DeliveryCounts {
    mail::deliver_due(core).await.expect("delivery pass")
}

async fn cashier(app: &TestApp) -> (TenantFixture, String, String) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (id, email) = app.user(&t, &["CASHIER"]).await;
    (t, id, email)
}

async fn security_reasons(app: &TestApp, t: &TenantFixture, kind: &str) -> Vec<String> {
    app.audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|r| r.security_event.as_deref() == Some(kind))
        .map(|r| r.reason.unwrap_or_default())
        .collect()
}

async fn a_reset_link_travels_by_smtp_and_sets_the_password_revoking_every_session(app: &TestApp) {
    let (t, _, email) = cashier(app).await;
    let s1 = app.login(Some("acme"), &email, PASSWORD).await;
    let s2 = app.login(Some("acme"), &email, PASSWORD).await;
    let (a1, a2) = (
        s1.body["access_token"].as_str().unwrap().to_owned(),
        s2.body["access_token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(app.get("/v1/me", &a1).await.status, StatusCode::OK);

    let r = ask(app, "acme", &email).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let port = free_port();
    let sink = SmtpSink::start(port);
    let core = smtp_core(app, port).await;
    let counts = deliver(&core).await;
    assert_eq!(counts.sent, 1, "{counts:?}");
    let inbox = sink.messages();
    assert_eq!(inbox.len(), 1);
    let msg = &inbox[0];
    assert!(msg.contains(&format!("X-Envelope-To: {email}")), "{msg}");
    assert!(msg.contains("From: Kasho <kasho@localhost>"), "{msg}");
    assert!(msg.contains("Subject: Reset your Kasho password"), "{msg}");
    assert!(
        msg.contains("http://127.0.0.1:8080/reset-password#token="),
        "{msg}"
    );
    let token = token_in(msg);
    assert!(token.len() >= 43, "256 bits in base64url: {token}");
    // Nothing left to send.
    assert_eq!(deliver(&core).await, DeliveryCounts::default());

    let new_password = "a completely new passphrase 42";
    let c = confirm(app, &token, new_password).await;
    assert_eq!(c.status, StatusCode::NO_CONTENT, "{c:?}");
    for a in [&a1, &a2] {
        assert_eq!(
            app.get("/v1/me", a).await.status,
            StatusCode::UNAUTHORIZED,
            "every session ends"
        );
    }
    let refresh = app
        .post(
            "/v1/auth/refresh",
            None,
            json!({ "refresh_token": s1.body["refresh_token"] }),
        )
        .await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED, "{refresh:?}");
    let old = app.login(Some("acme"), &email, PASSWORD).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{old:?}");
    let new = app.login(Some("acme"), &email, new_password).await;
    assert_eq!(new.status, StatusCode::OK, "{new:?}");

    // Single use.
    let again = confirm(app, &token, "yet another passphrase 4242").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{again:?}");
    assert_eq!(again.code(), "reset_token_invalid");
    assert_eq!(
        app.login(Some("acme"), &email, new_password).await.status,
        StatusCode::OK
    );
    assert_eq!(
        security_reasons(app, &t, "password_reset_requested").await,
        vec!["queued"]
    );
    assert_eq!(
        security_reasons(app, &t, "password_reset_failed").await,
        vec!["already_used"]
    );
}

async fn unknown_accounts_get_the_same_answer_and_no_mail(app: &TestApp) {
    let (t, uid, email) = cashier(app).await;
    // Created (its invitation delivered and accepted) before any reset is asked for.
    let (other_id, other_email) = app.user(&t, &["CASHIER"]).await;
    let known = ask(app, "acme", &email).await;
    let unknown = ask(app, "acme", "nobody@acme.test").await;
    let no_tenant = ask(app, "no-such-tenant", &email).await;
    // A disabled account gets no link either.
    let d = app
        .post(
            &format!("/v1/users/{other_id}/disable"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert!(d.status.is_success(), "{d:?}");
    let disabled = ask(app, "acme", &other_email).await;
    for r in [&known, &unknown, &no_tenant, &disabled] {
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
        assert_eq!(r.body, known.body, "the same body");
        let mut h: Vec<_> = r
            .headers
            .iter()
            // The rate-limit headers count the caller's own requests, whatever the account.
            .filter(|(k, _)| *k != "x-request-id" && !k.as_str().starts_with("ratelimit-"))
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        let mut hk: Vec<_> = known
            .headers
            .iter()
            // The rate-limit headers count the caller's own requests, whatever the account.
            .filter(|(k, _)| *k != "x-request-id" && !k.as_str().starts_with("ratelimit-"))
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        hk.sort();
        assert_eq!(h, hk, "the same headers");
    }
    let port = free_port();
    let sink = SmtpSink::start(port);
    let core = smtp_core(app, port).await;
    assert_eq!(
        deliver(&core).await.sent,
        1,
        "only the known, active account"
    );
    let inbox = sink.messages();
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].contains(&format!("X-Envelope-To: {email}")));
    let tokens = app
        .raw_strings("SELECT user_id FROM password_reset_tokens")
        .await;
    assert_eq!(tokens, vec![uid]);
    // Auditors can tell the cases apart; callers cannot.
    let mut reasons = security_reasons(app, &t, "password_reset_requested").await;
    reasons.sort();
    assert_eq!(
        reasons,
        vec!["account_disabled", "queued", "unknown_account"]
    );
    let platform: Vec<String> = app
        .audit_chain("platform")
        .await
        .into_iter()
        .filter(|r| r.action == "auth.password_reset.request")
        .map(|r| r.reason.unwrap_or_default())
        .collect();
    assert_eq!(platform, vec!["unknown_tenant"]);
    // Malformed input is refused in the error shape (it says nothing about accounts).
    let bad = ask(app, "acme", "not an email").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["error"]["param"], "email");
    let extra = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": "acme", "email": email, "admin": true }),
        )
        .await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST, "{extra:?}");
}

async fn a_link_expires_after_thirty_minutes_and_a_newer_one_supersedes_it(app: &TestApp) {
    let (t, _, email) = cashier(app).await;
    assert_eq!(ask(app, "acme", &email).await.status, StatusCode::ACCEPTED);
    deliver(&app.core).await;
    let first = token_in(&read_eml(&app.data_dir.path().join("mailbox"))[0]);
    app.clock.advance_seconds(30 * 60 + 1);
    let late = confirm(app, &first, "a completely new passphrase 42").await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST, "{late:?}");
    assert_eq!(late.code(), "reset_token_invalid");
    assert_eq!(
        app.login(Some("acme"), &email, PASSWORD).await.status,
        StatusCode::OK,
        "nothing changed"
    );

    // Two fresh links: only the newer one works.
    assert_eq!(ask(app, "acme", &email).await.status, StatusCode::ACCEPTED);
    app.clock.advance_seconds(1);
    assert_eq!(ask(app, "acme", &email).await.status, StatusCode::ACCEPTED);
    assert_eq!(deliver(&app.core).await.sent, 2);
    let mails = read_eml(&app.data_dir.path().join("mailbox"));
    assert_eq!(mails.len(), 3);
    let (older, newer) = (token_in(&mails[1]), token_in(&mails[2]));
    assert_ne!(older, newer);
    let r = confirm(app, &older, "a completely new passphrase 42").await;
    assert_eq!(r.code(), "reset_token_invalid", "{r:?}");
    app.clock.advance_seconds(29 * 60);
    let r = confirm(app, &newer, "a completely new passphrase 42").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "29 minutes old: {r:?}");
    assert_eq!(
        security_reasons(app, &t, "password_reset_failed").await,
        vec!["expired", "superseded"]
    );
    let bogus = confirm(app, "not-a-token", "a completely new passphrase 43").await;
    assert_eq!(bogus.code(), "reset_token_invalid");

    // At most three links per 15 minutes: the fourth request answers the same, sends nothing.
    // (The links of 29 minutes ago are outside the window.)
    for _ in 0..4 {
        assert_eq!(ask(app, "acme", &email).await.status, StatusCode::ACCEPTED);
    }
    deliver(&app.core).await;
    assert_eq!(read_eml(&app.data_dir.path().join("mailbox")).len(), 6);
    let reasons = security_reasons(app, &t, "password_reset_requested").await;
    assert_eq!(reasons.last().map(String::as_str), Some("rate_limited"));
}

async fn a_weak_or_reused_password_is_refused_and_the_link_stays_usable(app: &TestApp) {
    let (_, _, email) = cashier(app).await;
    ask(app, "acme", &email).await;
    deliver(&app.core).await;
    let token = token_in(&read_eml(&app.data_dir.path().join("mailbox"))[0]);
    let short = confirm(app, &token, "short").await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST, "{short:?}");
    assert_eq!(short.code(), "password_too_short");
    assert_eq!(short.body["error"]["param"], "new_password");
    let reused = confirm(app, &token, PASSWORD).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST, "{reused:?}");
    assert_eq!(reused.code(), "password_reused");
    assert_eq!(
        app.login(Some("acme"), &email, PASSWORD).await.status,
        StatusCode::OK,
        "the password is unchanged"
    );
    let ok = confirm(app, &token, "a completely new passphrase 42").await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{ok:?}");
}

async fn a_reset_lifts_the_sign_in_lock(app: &TestApp) {
    let (_, _, email) = cashier(app).await;
    let mut locked = false;
    for _ in 0..30 {
        let r = app.login(Some("acme"), &email, "wrong password!!").await;
        if r.code() == "account_locked" {
            locked = true;
            break;
        }
        // Wait out the progressive delay between attempts.
        app.clock.advance_seconds(31);
    }
    assert!(locked, "the account locks");
    assert_eq!(
        app.login(Some("acme"), &email, PASSWORD).await.code(),
        "account_locked"
    );
    ask(app, "acme", &email).await;
    deliver(&app.core).await;
    let token = token_in(&read_eml(&app.data_dir.path().join("mailbox"))[0]);
    let new_password = "a completely new passphrase 42";
    assert_eq!(
        confirm(app, &token, new_password).await.status,
        StatusCode::NO_CONTENT
    );
    let r = app.login(Some("acme"), &email, new_password).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn mail_waits_in_the_outbox_while_smtp_is_down_and_is_retried(app: &TestApp) {
    let (_, _, email) = cashier(app).await;
    let port = free_port();
    let core = smtp_core(app, port).await;
    ask(app, "acme", &email).await;
    let c = deliver(&core).await;
    assert_eq!(
        (c.sent, c.retried, c.failed),
        (0, 1, 0),
        "nothing listens yet"
    );
    let rows = app
        .raw_strings(
            "SELECT status || ':' || CAST(attempts AS TEXT) || ':' || COALESCE(last_error, '') FROM mail_outbox WHERE kind = 'password_reset'",
        )
        .await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].starts_with("pending:1:smtp connect"), "{rows:?}");
    assert!(
        !rows[0].contains(&email),
        "no address in the error: {rows:?}"
    );
    // Not due again before the back-off.
    let sink = SmtpSink::start(port);
    assert_eq!(deliver(&core).await, DeliveryCounts::default());
    app.clock.advance_seconds(31);
    assert_eq!(deliver(&core).await.sent, 1);
    assert_eq!(sink.messages().len(), 1);
    let rows = app
        .raw_strings(
            "SELECT status || ':' || CAST(attempts AS TEXT) || ':' || CASE WHEN message IS NULL THEN 'cleared' ELSE 'kept' END FROM mail_outbox WHERE kind = 'password_reset'",
        )
        .await;
    assert_eq!(rows, vec!["sent:2:cleared"]);
    drop(sink);

    // A message that never gets through is given up on after mail_max_attempts.
    let (core2, _) = app
        .instance_with(&[
            ("smtp_url", &format!("smtp://127.0.0.1:{}", free_port())),
            ("mail_max_attempts", "3"),
        ])
        .await;
    app.clock.advance_seconds(16 * 60);
    ask(app, "acme", &email).await;
    let mut total = DeliveryCounts::default();
    for _ in 0..5 {
        let c = deliver(&core2).await;
        total.retried += c.retried;
        total.failed += c.failed;
        app.clock.advance_seconds(3600);
    }
    assert_eq!((total.retried, total.failed), (2, 1), "{total:?}");
    let rows = app
        .raw_strings(
            "SELECT status || ':' || CAST(attempts AS TEXT) || ':' || CASE WHEN message IS NULL THEN 'cleared' ELSE 'kept' END FROM mail_outbox WHERE status <> 'sent'",
        )
        .await;
    assert_eq!(rows, vec!["failed:3:cleared"]);
}

async fn without_smtp_mail_lands_in_the_private_mailbox_folder(app: &TestApp) {
    let (_, _, email) = cashier(app).await;
    ask(app, "acme", &email).await;
    let c = deliver(&app.core).await;
    assert_eq!(c.sent, 1, "{c:?}");
    let dir = app.data_dir.path().join("mailbox");
    let mails = read_eml(&dir);
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains(&format!("To: <{email}>")), "{}", mails[0]);
    assert!(mails[0].contains("\r\n\r\n"), "RFC 5322 with CRLF");
    assert!(!token_in(&mails[0]).is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .unwrap();
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
}

async fn the_token_and_the_email_are_not_stored_in_clear(app: &TestApp) {
    let (_, _, email) = cashier(app).await;
    ask(app, "acme", &email).await;
    // Before delivery the message (with its link) is sealed at rest.
    let sealed = app
        .raw_strings("SELECT message FROM mail_outbox WHERE kind = 'password_reset'")
        .await;
    assert!(
        sealed[0].starts_with("kx1."),
        "sealed: {}",
        &sealed[0][..10]
    );
    deliver(&app.core).await;
    let token = token_in(&read_eml(&app.data_dir.path().join("mailbox"))[0]);
    let at_rest = app.bytes_at_rest().await;
    let needle = token.as_bytes();
    assert!(
        !at_rest.windows(needle.len()).any(|w| w == needle),
        "the token is not in the database"
    );
    let hashes = app
        .raw_strings("SELECT token_hash FROM password_reset_tokens")
        .await;
    assert_eq!(hashes.len(), 1);
    assert_eq!(hashes[0].len(), 64, "a SHA-256 digest");
    assert!(!hashes[0].contains(&token));
    // After delivery the sealed text is gone.
    let left = app
        .raw_strings("SELECT COALESCE(message, 'none') FROM mail_outbox")
        .await;
    assert!(left.iter().all(|m| m == "none"), "{left:?}");
}

async fn retention_purges_old_reset_tokens_and_delivered_mail(app: &TestApp) {
    let (_, _, email) = cashier(app).await;
    ask(app, "acme", &email).await;
    deliver(&app.core).await;
    let now = app.clock_now();
    let r = kasho::service::retention::run_once(&app.core, now)
        .await
        .unwrap();
    assert_eq!(r.reset_tokens, Some(0), "live: kept");
    assert_eq!(r.counts.mail_messages, 0, "sent just now: kept");
    app.clock.advance_seconds(8 * 86_400);
    let r = kasho::service::retention::run_once(&app.core, app.clock_now())
        .await
        .unwrap();
    assert_eq!(r.reset_tokens, Some(1), "{r:?}");
    // The reset mail, and the manager's and the cashier's invitations.
    assert_eq!(r.counts.mail_messages, 3, "{r:?}");
    assert_eq!(
        app.raw_strings("SELECT id FROM password_reset_tokens")
            .await
            .len(),
        0
    );
    assert_eq!(app.raw_strings("SELECT id FROM mail_outbox").await.len(), 0);
}

backend_tests!(
    a_reset_link_travels_by_smtp_and_sets_the_password_revoking_every_session,
    unknown_accounts_get_the_same_answer_and_no_mail,
    a_link_expires_after_thirty_minutes_and_a_newer_one_supersedes_it,
    a_weak_or_reused_password_is_refused_and_the_link_stays_usable,
    a_reset_lifts_the_sign_in_lock,
    mail_waits_in_the_outbox_while_smtp_is_down_and_is_retried,
    without_smtp_mail_lands_in_the_private_mailbox_folder,
    the_token_and_the_email_are_not_stored_in_clear,
    retention_purges_old_reset_tokens_and_delivered_mail,
);

/// A reset never bypasses MFA: with an authenticator on, the link alone does not set the
/// password; a wrong code is refused (and counted); a current code lets it through.
async fn a_reset_needs_the_second_factor_when_mfa_is_on(app: &TestApp) {
    let (_, _, email) = cashier(app).await;
    let token = app.token(Some("acme"), &email).await;
    let (secret, _) = crate::mfa::enable_mfa(app, &token).await;
    ask(app, "acme", &email).await;
    let c = deliver(&app.core).await;
    assert_eq!(c.sent, 1, "{c:?}");
    let mails = read_eml(&app.data_dir.path().join("mailbox"));
    let link = token_in(&mails[0]);
    let new_password = "lilac thunder ferry octopus 93";
    let confirm_with = |code: Option<String>| {
        let link = link.clone();
        async move {
            let mut body = json!({ "token": link, "new_password": new_password });
            if let Some(c) = code {
                body["code"] = json!(c);
            }
            app.post("/v1/auth/password-reset/confirm", None, body)
                .await
        }
    };
    let r = confirm_with(None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "mfa_code_required");
    let r = confirm_with(Some("000000".into())).await;
    assert!(r.status.is_client_error(), "{r:?}");
    assert_eq!(r.code(), "mfa_code_invalid");
    // Nothing changed: the old password still works (with its second step).
    let login = app.login(Some("acme"), &email, PASSWORD).await;
    assert_eq!(login.body["mfa_required"], json!(true), "{login:?}");
    let r = confirm_with(Some(crate::mfa::code_now(app, &secret))).await;
    assert_eq!(r.status.as_u16() / 100, 2, "{r:?}");
    let old = app.login(Some("acme"), &email, PASSWORD).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{old:?}");
    let new = app.login(Some("acme"), &email, new_password).await;
    assert_eq!(new.status, StatusCode::OK, "{new:?}");
    assert_eq!(
        new.body["mfa_required"],
        json!(true),
        "MFA stays on after a reset"
    );
}

mod with_mfa {
    crate::backend_tests!(a_reset_needs_the_second_factor_when_mfa_is_on);
    use super::a_reset_needs_the_second_factor_when_mfa_is_on;
}
