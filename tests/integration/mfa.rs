//! TOTP MFA with recovery codes: enrolment, sign-in with a second factor, replay refusal,
//! lockout, enforcement by role, step-up for disabling, and the secret at rest. Codes are
//! computed here from the secret with HMAC-SHA1 (RFC 6238), independently of Kasho's code.

use axum::http::{Method, StatusCode};
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{PASSWORD, Resp, TenantFixture, TestApp};

fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buf, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base32") as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// RFC 6238 TOTP (SHA-1, 6 digits, 30 s) of `secret_b32` at `unix` seconds.
fn totp_at(secret_b32: &str, unix: i64) -> String {
    let key = base32_decode(secret_b32);
    let counter = (unix.div_euclid(30)) as u64;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[19] & 0x0f) as usize;
    let word = u32::from_be_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]]) & 0x7fff_ffff;
    format!("{:06}", word % 1_000_000)
}

fn now_unix(app: &TestApp) -> i64 {
    app.clock_now().unix_seconds()
}

pub(crate) fn code_now(app: &TestApp, secret: &str) -> String {
    totp_at(secret, now_unix(app))
}

/// Starts an enrolment; returns the secret and the whole answer.
async fn enrol(app: &TestApp, token: &str) -> (String, Value) {
    let r = app.post("/v1/me/mfa/totp", Some(token), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    (r.body["secret"].as_str().unwrap().to_owned(), r.body)
}

/// Enrols and confirms; returns the secret and the recovery codes. Moves the clock to the next
/// step, so the confirming code's step is behind.
pub(crate) async fn enable_mfa(app: &TestApp, token: &str) -> (String, Vec<String>) {
    let (secret, _) = enrol(app, token).await;
    let r = app
        .post(
            "/v1/me/mfa/totp/confirm",
            Some(token),
            json!({ "code": code_now(app, &secret) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let codes = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    app.clock.advance_seconds(30);
    (secret, codes)
}

/// A password sign-in that must answer an MFA challenge; returns the MFA token.
async fn mfa_token(app: &TestApp, tenant: Option<&str>, email: &str) -> String {
    let r = app.login(tenant, email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["mfa_required"], json!(true), "{r:?}");
    assert!(r.body.get("access_token").is_none(), "{r:?}");
    r.body["mfa_token"].as_str().unwrap().to_owned()
}

async fn second_step(app: &TestApp, token: &str, code: &str) -> Resp {
    app.post(
        "/v1/auth/mfa",
        None,
        json!({ "mfa_token": token, "code": code }),
    )
    .await
}

async fn cashier(app: &TestApp) -> (TenantFixture, String, String) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (id, email) = app.user(&t, &["CASHIER"]).await;
    (t, id, email)
}

async fn mfa_flag(app: &TestApp, user: &str) -> String {
    app.raw_strings(&format!(
        "SELECT CAST(mfa_enabled AS TEXT) FROM users WHERE id = '{user}'"
    ))
    .await[0]
        .clone()
}

async fn enrolment_returns_secret_uri_and_qr_and_activates_only_after_a_correct_code(
    app: &TestApp,
) {
    let (t, id, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (secret, body) = enrol(app, &token).await;
    // 160 bits at least, base32.
    assert!(secret.len() >= 32, "{secret}");
    assert!(base32_decode(&secret).len() >= 20);
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(
        uri.contains("algorithm=SHA1") && uri.contains("digits=6") && uri.contains("period=30")
    );
    assert!(uri.contains("issuer=acme%20Ltd"), "{uri}");
    assert!(uri.contains(&email.replace('@', "%40")), "{uri}");
    let qr = body["qr_code"].as_str().unwrap();
    let svg = base64::engine::general_purpose::STANDARD
        .decode(
            qr.strip_prefix("data:image/svg+xml;base64,")
                .expect("svg data uri"),
        )
        .unwrap();
    assert!(String::from_utf8(svg).unwrap().contains("<svg"));

    // Nothing is active yet: sign-in still answers tokens, the flag is off.
    let status = app.get("/v1/me/mfa", &token).await;
    assert_eq!(status.body["enabled"], json!(false), "{status:?}");
    assert_eq!(status.body["enrolment_pending"], json!(true));
    assert_eq!(mfa_flag(app, &id).await, "0");
    let r = app.login(Some(&t.slug), &email, PASSWORD).await;
    assert!(r.body["access_token"].is_string(), "{r:?}");

    // A wrong code is refused and changes nothing.
    let wrong = totp_at(&secret, now_unix(app) - 120);
    let r = app
        .post(
            "/v1/me/mfa/totp/confirm",
            Some(&token),
            json!({ "code": wrong }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "invalid_mfa_code");
    assert_eq!(mfa_flag(app, &id).await, "0");

    // The right one turns MFA on and answers 10 distinct recovery codes.
    let r = app
        .post(
            "/v1/me/mfa/totp/confirm",
            Some(&token),
            json!({ "code": code_now(app, &secret) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let mut codes: Vec<String> = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 10);
    assert_eq!(mfa_flag(app, &id).await, "1");
    let status = app.get("/v1/me/mfa", &token).await;
    assert_eq!(status.body["enabled"], json!(true), "{status:?}");
    assert_eq!(status.body["recovery_codes_remaining"], json!(10));
    assert!(status.body["enabled_at"].is_string());
    // Stored hashed: no code appears in the database.
    let stored = app
        .raw_strings(&format!(
            "SELECT code_hash FROM mfa_recovery_codes WHERE user_id = '{id}'"
        ))
        .await;
    assert_eq!(stored.len(), 10);
    for c in &codes {
        assert!(
            !stored
                .iter()
                .any(|s| s.contains(c) || s.contains(&c.replace('-', "")))
        );
    }
    // Audited in the tenant's chain.
    let actions: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.iter().any(|a| a == "mfa.enrol"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "mfa.confirm"), "{actions:?}");
}

async fn sign_in_with_mfa_answers_a_challenge_and_a_code_issues_tokens(app: &TestApp) {
    let (t, _, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (secret, _) = enable_mfa(app, &token).await;

    let challenge = mfa_token(app, Some(&t.slug), &email).await;
    assert!(challenge.len() >= 43, "256 bits at least");
    // The challenge token is no access token.
    let r = app.get("/v1/me", &challenge).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = second_step(app, &challenge, &code_now(app, &secret)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let access = r.body["access_token"].as_str().unwrap();
    assert!(r.body["refresh_token"].is_string());
    let me = app.get("/v1/me", access).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    // The challenge is single use.
    app.clock.advance_seconds(30);
    let r = second_step(app, &challenge, &code_now(app, &secret)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert_eq!(r.code(), "invalid_token");
    // And it expires after about 5 minutes.
    let late = mfa_token(app, Some(&t.slug), &email).await;
    app.clock.advance_seconds(301);
    let r = second_step(app, &late, &code_now(app, &secret)).await;
    assert_eq!(r.code(), "invalid_token", "{r:?}");
    // The session records how it was opened.
    let methods: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.action == "auth.login")
        .filter_map(|e| e.reason)
        .collect();
    assert!(methods.iter().any(|m| m == "password+totp"), "{methods:?}");
}

async fn a_totp_code_is_never_accepted_twice(app: &TestApp) {
    let (t, _, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (secret, _) = enable_mfa(app, &token).await;

    let code = code_now(app, &secret);
    let first = mfa_token(app, Some(&t.slug), &email).await;
    let r = second_step(app, &first, &code).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // The same code a second later, on a fresh challenge: refused (TOTP replay).
    app.clock.advance_seconds(1);
    let again = mfa_token(app, Some(&t.slug), &email).await;
    let r = second_step(app, &again, &code).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert_eq!(r.code(), "invalid_mfa_code");
    // Security event recorded.
    let events: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter_map(|e| e.security_event.map(|s| s.as_str().to_owned()))
        .collect();
    assert!(events.iter().any(|e| e == "mfa_failed"), "{events:?}");

    // The next step's code works once, even when two requests race with it.
    app.clock.advance_seconds(30);
    let code = code_now(app, &secret);
    let a = mfa_token(app, Some(&t.slug), &email).await;
    let b = mfa_token(app, Some(&t.slug), &email).await;
    let (ra, rb) = tokio::join!(second_step(app, &a, &code), second_step(app, &b, &code));
    let ok = [&ra, &rb]
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "exactly one wins: {ra:?} {rb:?}");
}

async fn the_previous_step_is_accepted_but_not_older(app: &TestApp) {
    let (t, _, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (secret, _) = enable_mfa(app, &token).await;
    app.clock.advance_seconds(90);

    let challenge = mfa_token(app, Some(&t.slug), &email).await;
    let older = totp_at(&secret, now_unix(app) - 60);
    let r = second_step(app, &challenge, &older).await;
    assert_eq!(r.code(), "invalid_mfa_code", "{r:?}");
    let ahead = totp_at(&secret, now_unix(app) + 30);
    let r = second_step(app, &challenge, &ahead).await;
    assert_eq!(r.code(), "invalid_mfa_code", "{r:?}");
    let previous = totp_at(&secret, now_unix(app) - 30);
    let r = second_step(app, &challenge, &previous).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn a_recovery_code_works_once(app: &TestApp) {
    let (t, _, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (_, codes) = enable_mfa(app, &token).await;

    let challenge = mfa_token(app, Some(&t.slug), &email).await;
    // Typed loosely: lower case, spaces instead of dashes.
    let typed = codes[3].to_lowercase().replace('-', " ");
    let r = second_step(app, &challenge, &typed).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let access = r.body["access_token"].as_str().unwrap().to_owned();
    let status = app.get("/v1/me/mfa", &access).await;
    assert_eq!(
        status.body["recovery_codes_remaining"],
        json!(9),
        "{status:?}"
    );

    let challenge = mfa_token(app, Some(&t.slug), &email).await;
    let r = second_step(app, &challenge, &codes[3]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert_eq!(r.code(), "invalid_mfa_code");
    let r = second_step(app, &challenge, &codes[4]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let methods: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.action == "auth.login")
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        methods.iter().any(|m| m == "password+recovery_code"),
        "{methods:?}"
    );
}

async fn wrong_codes_lock_the_account(app: &TestApp) {
    let (t, _, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (secret, _) = enable_mfa(app, &token).await;

    // A challenge dies after 5 wrong codes, even before the account locks.
    let mut challenge = mfa_token(app, Some(&t.slug), &email).await;
    let mut wrong_answers = 0;
    let mut last = None;
    for i in 0..10 {
        if i == 5 {
            // The first challenge is dead now, even with the right code.
            let r = second_step(app, &challenge, &code_now(app, &secret)).await;
            assert_eq!(r.code(), "invalid_token", "{r:?}");
            // A correct password does not reset the count of wrong codes.
            challenge = mfa_token(app, Some(&t.slug), &email).await;
        }
        if i == 9 {
            // A fresh challenge before the tenth failure: the lock applies to it too.
            challenge = mfa_token(app, Some(&t.slug), &email).await;
        }
        let bad = if code_now(app, &secret) == "000000" {
            "111111"
        } else {
            "000000"
        };
        let r = second_step(app, &challenge, bad).await;
        if r.status == StatusCode::UNAUTHORIZED {
            wrong_answers += 1;
        }
        last = Some(r);
        // Past the progressive delay (30 s at most).
        app.clock.advance_seconds(31);
    }
    assert_eq!(wrong_answers, 10, "{last:?}");
    // Locked: the right code is refused now (on a live challenge), and so is the password.
    let r = second_step(app, &challenge, &code_now(app, &secret)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "account_locked");
    assert!(r.headers.get("retry-after").is_some());
    let r = app.login(Some(&t.slug), &email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    let events: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter_map(|e| e.security_event.map(|s| s.as_str().to_owned()))
        .collect();
    assert!(events.iter().filter(|e| *e == "mfa_failed").count() >= 10);
    assert!(events.iter().any(|e| e == "account_locked"), "{events:?}");
}

async fn a_role_that_requires_mfa_can_only_enrol_until_enrolled(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, manager_email) = app.user(&t, &["MANAGER"]).await;
    let policy = kasho::domain::security::SecurityPolicy {
        mfa_required_roles: vec![kasho::domain::authz::Role::Manager],
        ..Default::default()
    };
    app.core
        .store
        .put_security_policy(
            &kasho::ids::TenantId::from_trusted(t.id.clone()),
            &serde_json::to_string(&policy).unwrap(),
            "test",
            app.clock_now(),
            &[],
        )
        .await
        .unwrap();
    let token = app.token(Some(&t.slug), &manager_email).await;
    let me = app.get("/v1/me", &token).await;
    assert_eq!(me.body["mfa_enrolment_required"], json!(true), "{me:?}");
    for path in ["/v1/users", "/v1/customers", "/v1/me/sessions"] {
        let r = app.get(path, &token).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {r:?}");
        assert_eq!(r.code(), "mfa_enrolment_required", "{path}");
    }
    let status = app.get("/v1/me/mfa", &token).await;
    assert_eq!(status.status, StatusCode::OK, "{status:?}");
    assert_eq!(status.body["required"], json!(true));

    let (secret, _) = enable_mfa(app, &token).await;
    // Enrolled: the same session may act now.
    let r = app.get("/v1/users", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // And the role cannot turn MFA off.
    let r = app
        .request(Method::DELETE, "/v1/me/mfa/totp", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "mfa_required_by_policy");
    // Sign-in now needs the second factor.
    let challenge = mfa_token(app, Some(&t.slug), &manager_email).await;
    let r = second_step(app, &challenge, &code_now(app, &secret)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn disabling_and_new_recovery_codes_need_step_up(app: &TestApp) {
    let (t, id, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (secret, old_codes) = enable_mfa(app, &token).await;
    // Past the step-up window (10 minutes).
    app.clock.advance_seconds(11 * 60);
    let r = app
        .request(Method::DELETE, "/v1/me/mfa/totp", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "step_up_required");
    let r = app
        .post("/v1/me/mfa/recovery-codes", Some(&token), json!({}))
        .await;
    assert_eq!(r.code(), "step_up_required", "{r:?}");
    assert_eq!(mfa_flag(app, &id).await, "1");

    // Step-up with the password alone is not enough for a user with MFA; with a code it is.
    let r = app
        .post(
            "/v1/auth/step-up",
            Some(&token),
            json!({ "password": PASSWORD }),
        )
        .await;
    assert_ne!(r.status, StatusCode::OK, "{r:?}");
    let r = app
        .post(
            "/v1/auth/step-up",
            Some(&token),
            json!({ "password": PASSWORD, "code": code_now(app, &secret) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    let r = app
        .post("/v1/me/mfa/recovery-codes", Some(&token), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let new_codes = r.body["recovery_codes"].as_array().unwrap().clone();
    assert_eq!(new_codes.len(), 10);
    // The old codes stopped working.
    let challenge = mfa_token(app, Some(&t.slug), &email).await;
    let r = second_step(app, &challenge, &old_codes[0]).await;
    assert_eq!(r.code(), "invalid_mfa_code", "{r:?}");

    let r = app
        .request(Method::DELETE, "/v1/me/mfa/totp", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(mfa_flag(app, &id).await, "0");
    let status = app.get("/v1/me/mfa", &token).await;
    assert_eq!(status.body["enabled"], json!(false));
    // Sign-in is a password again; the new recovery codes are gone too.
    let r = app.login(Some(&t.slug), &email, PASSWORD).await;
    assert!(r.body["access_token"].is_string(), "{r:?}");
    let left = app
        .raw_strings(&format!(
            "SELECT id FROM mfa_recovery_codes WHERE user_id = '{id}'"
        ))
        .await;
    assert!(left.is_empty());
    let actions: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.iter().any(|a| a == "mfa.disable"), "{actions:?}");
    assert!(
        actions.iter().any(|a| a == "mfa.recovery_codes.regenerate"),
        "{actions:?}"
    );
}

async fn the_totp_secret_is_encrypted_at_rest(app: &TestApp) {
    let (t, id, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (pending, _) = enrol(app, &token).await;
    let (secret, _) = enable_mfa(app, &token).await;
    assert_ne!(pending, secret, "a restarted enrolment gets a new secret");

    // A platform admin (no tenant) enrols too, under the platform key.
    let admin_email = "root@platform.test";
    let hash = app.core.hasher.hash(&PASSWORD.into()).await.unwrap();
    app.core
        .store
        .create_user(
            &kasho::store::NewUser {
                id: kasho::ids::UserId::generate(),
                tenant_id: None,
                email_hash: kasho::service::users::email_hash(
                    &app.core,
                    None,
                    kasho::domain::values::Email::parse(admin_email)
                        .unwrap()
                        .as_str(),
                ),
                email: kasho::domain::values::Email::parse(admin_email)
                    .unwrap()
                    .as_str()
                    .to_owned(),
                password_hash: hash,
                roles: vec![kasho::domain::authz::Role::PlatformAdmin],
                created_at: app.clock_now(),
            },
            &[],
        )
        .await
        .unwrap();
    let admin = app.token(None, admin_email).await;
    let (admin_secret, _) = enable_mfa(app, &admin).await;
    let challenge = mfa_token(app, None, admin_email).await;
    let r = second_step(app, &challenge, &code_now(app, &admin_secret)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    let stored = app
        .raw_strings(&format!(
            "SELECT secret FROM mfa_totp WHERE user_id = '{id}'"
        ))
        .await;
    assert!(stored[0].starts_with("kx1."), "{stored:?}");
    let all = app.raw_strings("SELECT secret FROM mfa_totp").await;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|s| s.starts_with("kx1.")), "{all:?}");
    let bytes = app.bytes_at_rest().await;
    for s in [&secret, &admin_secret, &pending] {
        let raw = base32_decode(s);
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "base32 secret in clear"
        );
        assert!(
            !bytes.windows(raw.len()).any(|w| w == raw.as_slice()),
            "raw secret in clear"
        );
    }
    // A ciphertext moved to another user's row does not open.
    let (_, other_email) = app.user(&t, &["CASHIER"]).await;
    let other = app.token(Some(&t.slug), &other_email).await;
    enable_mfa(app, &other).await;
    app.raw_sql(&format!(
        "UPDATE mfa_totp SET secret = '{}' WHERE user_id <> '{id}' AND tenant_id IS NOT NULL",
        stored[0]
    ))
    .await;
    let challenge = mfa_token(app, Some(&t.slug), &other_email).await;
    let r = second_step(app, &challenge, &code_now(app, &secret)).await;
    assert_ne!(r.status, StatusCode::OK, "{r:?}");
}

async fn key_rotation_re_encrypts_the_secret_and_sign_in_still_works(app: &TestApp) {
    let (t, id, email) = cashier(app).await;
    let token = app.token(Some(&t.slug), &email).await;
    let (secret, _) = enable_mfa(app, &token).await;
    let before = app
        .raw_strings(&format!(
            "SELECT secret FROM mfa_totp WHERE user_id = '{id}'"
        ))
        .await;
    let tenant = kasho::ids::TenantId::from_trusted(t.id.clone());
    let r = app
        .core
        .keyring
        .rotate_tenant(&tenant, &|_, _| {})
        .await
        .unwrap();
    assert!(r.reencrypted >= 1, "{r:?}");
    let after = app
        .raw_strings(&format!(
            "SELECT secret FROM mfa_totp WHERE user_id = '{id}'"
        ))
        .await;
    assert_ne!(before, after, "re-encrypted under the new key version");
    let challenge = mfa_token(app, Some(&t.slug), &email).await;
    let r = second_step(app, &challenge, &code_now(app, &secret)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

backend_tests!(
    key_rotation_re_encrypts_the_secret_and_sign_in_still_works,
    enrolment_returns_secret_uri_and_qr_and_activates_only_after_a_correct_code,
    sign_in_with_mfa_answers_a_challenge_and_a_code_issues_tokens,
    a_totp_code_is_never_accepted_twice,
    the_previous_step_is_accepted_but_not_older,
    a_recovery_code_works_once,
    wrong_codes_lock_the_account,
    a_role_that_requires_mfa_can_only_enrol_until_enrolled,
    disabling_and_new_recovery_codes_need_step_up,
    the_totp_secret_is_encrypted_at_rest,
);
