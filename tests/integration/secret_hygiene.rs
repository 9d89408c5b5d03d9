//! Secret hygiene (issue 13 item 17): no secret type prints; a password change or reset
//! revokes the user's API tokens; production refuses `http://` links; SMTP speaks STARTTLS
//! (never falling back to plain text) and AUTH only inside TLS, checked against a small SMTP
//! server written here (plain TCP, then TLS with a `kasho dev-cert` certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::backend_tests;
use crate::support::{PASSWORD, TenantFixture, TestApp};
use kasho::config::mail::{SmtpAuth, SmtpTarget};
use kasho::service::mail;

const NEW_PASSWORD: &str = "seven orchard kites drift 2026";

async fn create_token(app: &TestApp, token: &str) -> (String, String) {
    let r = app
        .post(
            "/v1/api-tokens",
            Some(token),
            json!({ "name": "ci", "scopes": ["accounts:read"], "expires_in": "30d" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    )
}

async fn debug_never_shows_a_secret(app: &TestApp) {
    use kasho::service::auth::{self, LoginInput, LoginResult};
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let meta = kasho::service::RequestMeta::default();

    // A login result and its token pair.
    let Ok(result) = auth::login(
        &app.core,
        &meta,
        LoginInput {
            tenant: Some(t.slug.clone()),
            email: email.clone(),
            password: SecretString::from(PASSWORD),
            client_certificate: false,
        },
    )
    .await
    else {
        panic!("sign-in failed");
    };
    let LoginResult::Tokens(pair) = &result else {
        panic!("no MFA expected");
    };
    let access = pair.access_token.clone();
    let refresh = {
        use secrecy::ExposeSecret;
        pair.refresh_token.expose_secret().to_owned()
    };
    for shown in [
        format!("{result:?}"),
        format!("{pair:?}"),
        format!("{result:#?}"),
    ] {
        assert!(
            !shown.contains(&access),
            "the access token printed: {shown}"
        );
        assert!(
            !shown.contains(&refresh),
            "the refresh token printed: {shown}"
        );
        assert!(!shown.contains(&access[..20]), "{shown}");
    }

    // A new user's password hash.
    let hash = app
        .core
        .hasher
        .hash(&SecretString::from(PASSWORD))
        .await
        .unwrap();
    let user = kasho::store::NewUser {
        id: kasho::ids::UserId::generate(),
        tenant_id: None,
        email_hash: kasho::service::users::email_hash(
            &app.core,
            None,
            kasho::domain::values::Email::parse("new.user@acme.test")
                .unwrap()
                .as_str(),
        ),
        email: kasho::domain::values::Email::parse("new.user@acme.test")
            .unwrap()
            .as_str()
            .to_owned(),
        password_hash: hash.clone(),
        roles: vec![kasho::domain::authz::Role::Cashier],
        created_at: app.clock_now(),
    };
    let shown = format!("{user:?}");
    assert!(
        !shown.contains(&hash) && !shown.contains("argon2"),
        "{shown}"
    );
    assert!(!shown.contains("new.user@"), "{shown}");

    // A password change's new hash.
    let uid = kasho::ids::UserId::generate();
    let change = kasho::store::security::PasswordChange {
        tenant: None,
        user: &uid,
        new_hash: hash.clone(),
        keep_history: 4,
        keep_session: None,
        revoke_reason: "password_changed",
        now: app.clock_now(),
        spend_reset_token: Some("prt_1"),
    };
    let shown = format!("{change:?}");
    assert!(
        !shown.contains(&hash) && !shown.contains("argon2"),
        "{shown}"
    );

    // An issued API token: neither its secret nor its signing secret.
    let manager = auth::authenticate(&app.core, &meta, &t.manager_token)
        .await
        .unwrap();
    let issued = kasho::service::api_tokens::create(
        &app.core,
        &meta,
        &manager,
        kasho::service::api_tokens::CreateInput {
            name: "debug".into(),
            scopes: vec!["accounts:read".into()],
            expires_in: "30d".into(),
            allowed_ips: vec![],
        },
    )
    .await
    .unwrap();
    let (secret, signing) = {
        use secrecy::ExposeSecret;
        (
            issued.secret.expose_secret().to_owned(),
            issued.signing_secret.expose_secret().to_owned(),
        )
    };
    let shown = format!("{issued:?}");
    assert!(
        !shown.contains(&secret[6..]) && !shown.contains(&signing[10..]),
        "{shown}"
    );

    // SMTP credentials.
    let config = kasho::config::Config::from_pairs(&[
        ("smtp_url", "smtp://mail.example.com:587"),
        ("smtp_starttls", "true"),
        ("smtp_username", "kasho-mailer"),
        ("smtp_password", "relay-password-not-for-logs"),
    ])
    .unwrap();
    let shown = format!("{:?}", config.smtp);
    assert!(shown.contains("kasho-mailer"), "{shown}");
    assert!(!shown.contains("relay-password-not-for-logs"), "{shown}");
}

async fn password_change_and_reset_revoke_the_users_api_tokens(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;

    // A change from the account page: the other sessions end, and every API token.
    let (mine, secret) = create_token(app, &t.manager_token).await;
    let (_, second) = create_token(app, &t.manager_token).await;
    assert!(app.get("/v1/accounts", &secret).await.status.is_success());
    let r = app
        .post(
            "/v1/me/password",
            Some(&t.manager_token),
            json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    for token in [&secret, &second] {
        let r = app.get("/v1/accounts", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
        assert_eq!(r.code(), "invalid_token");
    }
    let revoked_by = app
        .raw_strings(&format!(
            "SELECT revoked_by FROM api_tokens WHERE id = '{mine}'"
        ))
        .await;
    assert_eq!(revoked_by, vec!["password_changed".to_owned()]);
    // The session that changed it goes on, and may mint a new token (with step-up).
    assert!(
        app.get("/v1/me", &t.manager_token)
            .await
            .status
            .is_success()
    );
    let (_, fresh) = create_token(app, &t.manager_token).await;
    assert!(app.get("/v1/accounts", &fresh).await.status.is_success());

    // A reset by email: the user's tokens end too, another user's stay.
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let cashier = app.token(Some(&t.slug), &email).await;
    let (_, cashier_secret) = create_token(app, &cashier).await;
    assert!(
        app.get("/v1/accounts", &cashier_secret)
            .await
            .status
            .is_success()
    );
    let r = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": t.slug, "email": email }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    mail::deliver_due(&app.core).await.unwrap();
    let token = reset_token_in_mailbox(&app.data_dir.path().join("mailbox"));
    let r = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({ "token": token, "new_password": NEW_PASSWORD }),
        )
        .await;
    assert!(r.status.is_success(), "{r:?}");
    let r = app.get("/v1/accounts", &cashier_secret).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert!(app.get("/v1/accounts", &fresh).await.status.is_success());
    let rejected: Vec<_> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| {
            e.security_event.as_deref() == Some("token_rejected")
                && e.reason.as_deref() == Some("token_revoked")
        })
        .collect();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
}

/// The reset token of the newest `.eml` in `dir`.
fn reset_token_in_mailbox(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    let text = std::fs::read_to_string(files.last().expect("a reset mail")).unwrap();
    let at = text.find("#token=").expect("a reset link") + "#token=".len();
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

async fn production_refuses_http_links_and_plain_smtp(app: &TestApp) {
    let keys = app.data_dir.path().join("keys");
    let check = |extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kasho"));
        cmd.args(["config", "check", "--env", "production", "--data-dir"])
            .arg(app.data_dir.path())
            .args(["--database-url", &app.database_url])
            .env("KASHO_LOG_LEVEL", "error")
            .env(
                "KASHO_JWT_SIGNING_KEY_FILE",
                keys.join("jwt-signing-key.pem"),
            )
            .env("KASHO_MASTER_KEY_FILE", keys.join("master.key"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // The default (http://<listen>) and an explicit http:// are refused, naming the key.
    let (ok, out) = check(&[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("`public_url`") && out.contains("https://"),
        "{out}"
    );
    let (ok, out) = check(&[("KASHO_PUBLIC_URL", "http://pay.example.com")]);
    assert!(!ok && out.contains("KASHO_PUBLIC_URL"), "{out}");
    // https passes that check; plain SMTP does not.
    let https = ("KASHO_PUBLIC_URL", "https://pay.example.com");
    let (ok, out) = check(&[
        https,
        ("KASHO_SMTP_URL", "smtp://mail.example.com:587"),
        ("KASHO_SMTP_STARTTLS", "false"),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("`smtp_starttls`") && out.contains("production requires STARTTLS"),
        "{out}"
    );
    let (ok, out) = check(&[
        https,
        ("KASHO_ALLOW_PLAIN_HTTP", "true"),
        ("KASHO_SMTP_URL", "smtp://mail.example.com:587"),
        ("KASHO_SMTP_USERNAME", "kasho"),
        ("KASHO_SMTP_PASSWORD", "relay-password-not-for-logs"),
    ]);
    assert!(ok, "{out}");
    assert!(!out.contains("relay-password-not-for-logs"), "{out}");
}

// ------------------------------------------------------------------------------------------
// A small SMTP server: plain until STARTTLS, then TLS with a development certificate.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fake {
    /// Offers STARTTLS and, inside TLS, AUTH PLAIN LOGIN.
    Honest,
    /// Offers no STARTTLS (as when someone on the path strips it).
    NoStartTls,
    /// Sends a second reply right after its `220` to STARTTLS, in clear.
    InjectsAfterStartTls,
}

#[derive(Debug, Default)]
struct Transcript {
    /// Command lines received in clear.
    clear: Vec<String>,
    /// Command lines received inside TLS.
    tls: Vec<String>,
    /// AUTH PLAIN credentials received (user, password).
    auth: Option<(String, String)>,
    /// The DATA payload.
    data: String,
}

struct FakeSmtp {
    port: u16,
    cert_file: PathBuf,
    _dir: tempfile::TempDir,
    done: tokio::task::JoinHandle<Transcript>,
}

const SMTP_USER: &str = "kasho-mailer";
const SMTP_PASSWORD: &str = "relay-password-not-for-logs";

/// Starts a server for one connection.
async fn fake_smtp(mode: Fake) -> FakeSmtp {
    let dir = tempfile::tempdir().unwrap();
    let cert = kasho::tls::dev_cert(&[]).unwrap();
    let cert_file = dir.path().join("cert.pem");
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    let acceptor = {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let done = tokio::spawn(async move {
        let mut t = Transcript::default();
        let Ok((tcp, _)) = listener.accept().await else {
            return t;
        };
        let mut io = BufReader::new(tcp);
        io.write_all(b"220 fake.test ESMTP\r\n").await.unwrap();
        // In clear.
        let upgrade = loop {
            let Some(line) = read_line(&mut io).await else {
                return t;
            };
            t.clear.push(line.clone());
            let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" if mode == Fake::NoStartTls => b"250-fake.test\r\n250 AUTH PLAIN LOGIN\r\n",
                "EHLO" => b"250-fake.test\r\n250-SIZE 1000000\r\n250 STARTTLS\r\n",
                "STARTTLS" if mode == Fake::InjectsAfterStartTls => {
                    b"220 go ahead\r\n250 injected in clear\r\n"
                }
                "STARTTLS" => b"220 go ahead\r\n",
                "QUIT" => b"221 bye\r\n",
                _ => b"250 ok\r\n",
            };
            io.write_all(reply).await.unwrap();
            if verb == "STARTTLS" {
                break true;
            }
            if verb == "QUIT" {
                break false;
            }
        };
        if !upgrade {
            return t;
        }
        let Ok(tls) = acceptor.accept(io.into_inner()).await else {
            return t;
        };
        let mut io = BufReader::new(tls);
        while let Some(line) = read_line(&mut io).await {
            t.tls.push(line.clone());
            let mut words = line.split_whitespace();
            let verb = words.next().unwrap_or("").to_uppercase();
            match verb.as_str() {
                "EHLO" => {
                    io.write_all(b"250-fake.test\r\n250 AUTH PLAIN LOGIN\r\n")
                        .await
                        .unwrap();
                }
                "AUTH" => {
                    use base64::Engine;
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(words.nth(1).unwrap_or(""))
                        .unwrap_or_default();
                    let parts: Vec<String> = raw
                        .split(|b| *b == 0)
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect();
                    let (user, pass) = (parts[1].clone(), parts[2].clone());
                    let ok = user == SMTP_USER && pass == SMTP_PASSWORD;
                    t.auth = Some((user, pass));
                    io.write_all(if ok {
                        b"235 authenticated\r\n"
                    } else {
                        b"535 bad credentials\r\n"
                    })
                    .await
                    .unwrap();
                }
                "DATA" => {
                    io.write_all(b"354 go on\r\n").await.unwrap();
                    let mut data = String::new();
                    while let Some(l) = read_line(&mut io).await {
                        if l == "." {
                            break;
                        }
                        data.push_str(&l);
                        data.push('\n');
                    }
                    t.data = data;
                    io.write_all(b"250 queued\r\n").await.unwrap();
                }
                "QUIT" => {
                    let _ = io.write_all(b"221 bye\r\n").await;
                    break;
                }
                _ => io.write_all(b"250 ok\r\n").await.unwrap(),
            }
        }
        t
    });
    FakeSmtp {
        port,
        cert_file,
        _dir: dir,
        done,
    }
}

async fn read_line<S: AsyncRead + AsyncWrite + Unpin>(io: &mut BufReader<S>) -> Option<String> {
    let mut line = String::new();
    match tokio::time::timeout(std::time::Duration::from_secs(10), io.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
        _ => None,
    }
}

impl FakeSmtp {
    fn target(&self, password: &str, trust: bool) -> SmtpTarget {
        SmtpTarget {
            host: "localhost".into(),
            port: self.port,
            starttls: true,
            auth: Some(SmtpAuth {
                username: SMTP_USER.into(),
                password: SecretString::from(password),
            }),
            ca_file: trust.then(|| self.cert_file.clone()),
        }
    }

    async fn transcript(self) -> Transcript {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.done)
            .await
            .expect("the fake SMTP server finished")
            .unwrap()
    }
}

const MESSAGE: &str = "Subject: hello\r\n\r\nthe body\r\n";

async fn smtp_upgrades_with_starttls_and_authenticates_only_inside_tls(_app: &TestApp) {
    // The honest server: STARTTLS, EHLO again, AUTH PLAIN inside TLS, then the message.
    let server = fake_smtp(Fake::Honest).await;
    mail::send_smtp(
        &server.target(SMTP_PASSWORD, true),
        "no-reply@kasho.test",
        "jane@example.com",
        MESSAGE,
    )
    .await
    .unwrap();
    let t = server.transcript().await;
    assert_eq!(t.clear, vec!["EHLO kasho.test", "STARTTLS"], "{t:?}");
    assert_eq!(t.tls[0], "EHLO kasho.test", "{t:?}");
    assert!(t.tls[1].starts_with("AUTH PLAIN "), "{t:?}");
    assert_eq!(
        t.auth,
        Some((SMTP_USER.to_owned(), SMTP_PASSWORD.to_owned()))
    );
    assert!(
        t.tls
            .contains(&"MAIL FROM:<no-reply@kasho.test>".to_owned())
    );
    assert!(t.tls.contains(&"RCPT TO:<jane@example.com>".to_owned()));
    assert!(t.data.contains("the body"), "{t:?}");

    // No STARTTLS offered: nothing is sent in clear but EHLO; the attempt fails (retried).
    let server = fake_smtp(Fake::NoStartTls).await;
    let e = mail::send_smtp(
        &server.target(SMTP_PASSWORD, true),
        "no-reply@kasho.test",
        "jane@example.com",
        MESSAGE,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("starttls: not offered"), "{e}");
    assert!(!e.permanent());
    let t = server.transcript().await;
    assert_eq!(t.clear, vec!["EHLO kasho.test"], "{t:?}");
    assert!(t.tls.is_empty() && t.auth.is_none());

    // Bytes after the 220 to STARTTLS (injected in clear): the connection is abandoned.
    let server = fake_smtp(Fake::InjectsAfterStartTls).await;
    let e = mail::send_smtp(
        &server.target(SMTP_PASSWORD, true),
        "no-reply@kasho.test",
        "jane@example.com",
        MESSAGE,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("starttls"), "{e}");
    let t = server.transcript().await;
    assert!(t.tls.is_empty() && t.auth.is_none(), "{t:?}");

    // A certificate nothing vouches for (the Mozilla roots do not know it): no AUTH is sent.
    let server = fake_smtp(Fake::Honest).await;
    let e = mail::send_smtp(
        &server.target(SMTP_PASSWORD, false),
        "no-reply@kasho.test",
        "jane@example.com",
        MESSAGE,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("handshake failed"), "{e}");
    let t = server.transcript().await;
    assert!(t.tls.is_empty() && t.auth.is_none(), "{t:?}");

    // Refused credentials: a permanent failure.
    let server = fake_smtp(Fake::Honest).await;
    let e = mail::send_smtp(
        &server.target("wrong-password", true),
        "no-reply@kasho.test",
        "jane@example.com",
        MESSAGE,
    )
    .await
    .unwrap_err();
    assert!(e.permanent(), "{e}");
    let t = server.transcript().await;
    assert!(!t.tls.iter().any(|l| l.starts_with("MAIL")), "{t:?}");
}

async fn reset_mail_goes_out_over_starttls_with_auth(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t: TenantFixture = app.tenant(&admin, "acme").await;
    let (_, email) = app.user(&t, &["CASHIER"]).await;
    let server = fake_smtp(Fake::Honest).await;
    let url = format!("smtp://localhost:{}", server.port);
    let ca = server.cert_file.display().to_string();
    let (core, _) = app
        .instance_with(&[
            ("smtp_url", &url),
            ("smtp_starttls", "true"),
            ("smtp_username", SMTP_USER),
            ("smtp_password", SMTP_PASSWORD),
            ("smtp_ca_file", &ca),
            ("mail_from", "no-reply@kasho.test"),
        ])
        .await;
    let r = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": t.slug, "email": email }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let counts = mail::deliver_due(&core).await.unwrap();
    assert_eq!(counts.sent, 1, "{counts:?}");
    let tr = server.transcript().await;
    assert_eq!(tr.clear, vec!["EHLO kasho.test", "STARTTLS"], "{tr:?}");
    assert!(tr.auth.is_some());
    assert!(
        tr.data.contains("#token="),
        "the reset link travelled inside TLS"
    );
}

backend_tests!(
    debug_never_shows_a_secret,
    password_change_and_reset_revoke_the_users_api_tokens,
    production_refuses_http_links_and_plain_smtp,
    smtp_upgrades_with_starttls_and_authenticates_only_inside_tls,
    reset_mail_goes_out_over_starttls_with_auth,
);
