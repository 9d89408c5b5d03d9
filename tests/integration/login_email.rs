//! Issue 14 item 5: a customer's login keeps no readable email. The address is stored sealed
//! under the login's own data key (which the customer's erasure destroys) and as a keyed hash
//! (`login-email/v1`) for lookup and uniqueness; the mail addressed to it is sealed under the
//! same key. Sign-in, password reset, invitations and uniqueness work as before; after the
//! erasure nothing at rest opens to the address.

use axum::http::StatusCode;
use serde_json::json;

use crate::backend_tests;
use crate::support::{Backend, PASSWORD, TenantFixture, TestApp};

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Every byte at rest, after SQLite has copied its WAL into the file and emptied it.
async fn at_rest(app: &TestApp) -> Vec<u8> {
    if app.backend == Backend::Sqlite {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        for _ in 0..100 {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&pool)
                .await
                .unwrap();
            if busy == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        pool.close().await;
    }
    app.bytes_at_rest().await
}

/// The `.eml` files of the development mailbox addressed to `email`, removed once read (as a
/// person reads and deletes a mail).
fn take_mail(app: &TestApp, email: &str) -> Vec<String> {
    let dir = app.data_dir.path().join("mailbox");
    let to = format!("To: <{}>", email.to_ascii_lowercase());
    let mut out = Vec::new();
    for p in std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    {
        if p.extension().is_some_and(|e| e == "eml")
            && let Ok(m) = std::fs::read_to_string(&p)
            && m.contains(&to)
        {
            std::fs::remove_file(&p).unwrap();
            out.push(m);
        }
    }
    out
}

fn token_in(message: &str) -> String {
    let at = message.find("#token=").expect("a link") + "#token=".len();
    message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// Asserts that neither the raw `users` and `mail_outbox` columns nor anything else at rest
/// (the SQLite file and WAL, a dump of the PostgreSQL schema) holds `email`.
async fn nowhere_at_rest(app: &TestApp, email: &str, when: &str) {
    let raw = app
        .raw_strings(
            "SELECT COALESCE(email, '') || ' ' || COALESCE(email_hash, '') FROM users \
             UNION ALL SELECT COALESCE(message, '') FROM mail_outbox",
        )
        .await;
    assert!(
        !raw.iter().any(|v| v.to_ascii_lowercase().contains(email)),
        "{when}: a raw column holds the customer's login email"
    );
    assert!(
        !contains(&at_rest(app).await, email),
        "{when}: the customer's login email is readable at rest"
    );
}

const EMAIL: &str = "grace.canary.8812@example.net";
const NEW_PASSWORD: &str = "Unrelated-Orbit-Lantern-47";

async fn invite_customer(app: &TestApp, t: &TenantFixture, email: &str) -> crate::support::Resp {
    app.post_stepping_up(
        "/v1/users",
        &t.manager_token,
        json!({ "email": email, "roles": ["CUSTOMER"] }),
    )
    .await
}

async fn a_customer_login_email_is_never_stored_in_clear_and_erasure_shreds_it(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;

    // Invited: the user and its invitation mail are stored without the clear address.
    let r = invite_customer(app, &t, EMAIL).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(
        r.body["email"], EMAIL,
        "the inviter sees the address: {r:?}"
    );
    let user_id = r.body["id"].as_str().unwrap().to_owned();
    let stored = app
        .raw_strings(&format!(
            "SELECT email || ' ' || email_hash FROM users WHERE id = '{user_id}'"
        ))
        .await;
    assert!(stored[0].starts_with("kx1."), "sealed: {stored:?}");
    assert!(stored[0].contains(" le1."), "hashed: {stored:?}");
    let owners = app
        .raw_strings(&format!(
            "SELECT owner FROM data_keys WHERE owner = 'login:{user_id}'"
        ))
        .await;
    assert_eq!(
        owners.len(),
        1,
        "the login has a key of its own: {owners:?}"
    );
    nowhere_at_rest(app, EMAIL, "invited").await;

    // The person accepts the invitation, signs in, and resets its password by email.
    let accepted = app.accept_invitation(EMAIL, PASSWORD).await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(accepted.body["email"], EMAIL, "{accepted:?}");
    let login = app.login(Some("acme"), EMAIL, PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    // Sign-in normalises the address as before.
    let upper = app
        .login(Some("acme"), &EMAIL.to_ascii_uppercase(), PASSWORD)
        .await;
    assert_eq!(upper.status, StatusCode::OK, "{upper:?}");
    let ask = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": "acme", "email": EMAIL }),
        )
        .await;
    assert!(ask.status.is_success(), "{ask:?}");
    nowhere_at_rest(app, EMAIL, "reset queued").await;
    kasho::service::mail::deliver_due(&app.core).await.unwrap();
    let mails = take_mail(app, EMAIL);
    assert_eq!(mails.len(), 1, "the reset reached the customer");
    let confirm = app
        .post(
            "/v1/auth/password-reset/confirm",
            None,
            json!({ "token": token_in(&mails[0]), "new_password": NEW_PASSWORD }),
        )
        .await;
    assert!(confirm.status.is_success(), "{confirm:?}");
    let login = app.login(Some("acme"), EMAIL, NEW_PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");

    // Staff see the address, opened, in the users list and the user's own record.
    let one = app
        .get(&format!("/v1/users/{user_id}"), &t.manager_token)
        .await;
    assert_eq!(one.body["email"], EMAIL, "{one:?}");
    let list = app.get("/v1/users?limit=100", &t.manager_token).await;
    assert!(
        list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == user_id.as_str() && u["email"] == EMAIL),
        "{list:?}"
    );
    nowhere_at_rest(app, EMAIL, "active").await;

    // Linked to a customer and erased: the login cannot sign in and nothing opens to it.
    let c = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "user_id": user_id, "first_name": "Grace", "last_name": "Canary" }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let cus = c.body["id"].as_str().unwrap().to_owned();
    // A reset still queued at the erasure is never delivered.
    let queued = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": "acme", "email": EMAIL }),
        )
        .await;
    assert!(queued.status.is_success(), "{queued:?}");
    let e = app
        .post(
            &format!("/v1/customers/{cus}/erase"),
            Some(&t.manager_token),
            json!({ "reason": "data_subject_request" }),
        )
        .await;
    assert_eq!(e.status, StatusCode::OK, "{e:?}");
    kasho::service::mail::deliver_due(&app.core).await.unwrap();
    assert!(take_mail(app, EMAIL).is_empty(), "mail to the erased login");
    let login = app.login(Some("acme"), EMAIL, NEW_PASSWORD).await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{login:?}");
    let keys = app
        .raw_strings(&format!(
            "SELECT status || ':' || COALESCE(wrapped, '-') FROM data_keys WHERE owner = 'login:{user_id}'"
        ))
        .await;
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "destroyed:-"),
        "{keys:?}"
    );
    let hash = app
        .raw_strings(&format!(
            "SELECT COALESCE(email_hash, 'none') FROM users WHERE id = '{user_id}'"
        ))
        .await;
    assert_eq!(hash, ["none"]);
    // Nobody can take the address back to the login: a lookup by it finds nothing.
    let again = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": "acme", "email": EMAIL }),
        )
        .await;
    assert!(again.status.is_success(), "{again:?}");
    kasho::service::mail::deliver_due(&app.core).await.unwrap();
    assert!(take_mail(app, EMAIL).is_empty(), "mail to the erased login");
    nowhere_at_rest(app, EMAIL, "erased").await;
}

async fn one_email_is_one_login_per_tenant_and_may_repeat_across_tenants(app: &TestApp) {
    let admin = app.platform_admin().await;
    let acme = app.tenant(&admin, "acme").await;
    let zeta = app.tenant(&admin, "zeta").await;
    let first = invite_customer(app, &acme, EMAIL).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    for again in [EMAIL.to_owned(), EMAIL.to_ascii_uppercase()] {
        let r = invite_customer(app, &acme, &again).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
        assert_eq!(r.code(), "email_taken", "{r:?}");
    }
    // A staff login cannot take a customer's address either.
    let staff = app
        .post_stepping_up(
            "/v1/users",
            &acme.manager_token,
            json!({ "email": EMAIL, "roles": ["CASHIER"] }),
        )
        .await;
    assert_eq!(staff.status, StatusCode::CONFLICT, "{staff:?}");
    // The same address in another tenant is another person's login.
    let other = invite_customer(app, &zeta, EMAIL).await;
    assert_eq!(other.status, StatusCode::CREATED, "{other:?}");
    let accepted = app.accept_invitation(EMAIL, PASSWORD).await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(
        app.login(Some("zeta"), EMAIL, PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.login(Some("acme"), EMAIL, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED,
        "acme's login has not chosen a password"
    );
    // The two stored values share nothing readable (the hash is keyed per tenant).
    let hashes = app
        .raw_strings("SELECT email_hash FROM users WHERE email_hash IS NOT NULL")
        .await;
    let mut unique = hashes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hashes.len(), "{hashes:?}");
    nowhere_at_rest(app, EMAIL, "two tenants").await;
}

async fn logins_stored_before_the_change_are_hashed_and_sealed_at_start(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (customer, customer_email) = app.user(&t, &["CUSTOMER"]).await;
    let (cashier, cashier_email) = app.user(&t, &["CASHIER"]).await;
    // What a database written before migration 0022 holds: clear emails, no hash.
    app.raw_sql(&format!(
        "UPDATE users SET email = '{customer_email}', email_hash = NULL WHERE id = '{customer}'"
    ))
    .await;
    app.raw_sql(&format!(
        "UPDATE users SET email_hash = NULL WHERE id = '{cashier}'"
    ))
    .await;
    // Until the start-up pass, such a login still signs in (matched on its clear email).
    assert_eq!(
        app.login(Some("acme"), &customer_email, PASSWORD)
            .await
            .status,
        StatusCode::OK
    );
    let converted = kasho::service::users::seal_login_emails(&app.core)
        .await
        .unwrap();
    assert!(converted >= 2, "{converted}");
    let rows = app
        .raw_strings(&format!(
            "SELECT id || ' ' || email || ' ' || COALESCE(email_hash, '-') FROM users \
             WHERE id IN ('{customer}', '{cashier}') ORDER BY id"
        ))
        .await;
    for row in &rows {
        assert!(row.contains(" le1."), "hashed: {row}");
    }
    let customer_row = rows.iter().find(|r| r.starts_with(&customer)).unwrap();
    assert!(
        customer_row.contains(" kx1."),
        "the customer's login is sealed: {customer_row}"
    );
    let cashier_row = rows.iter().find(|r| r.starts_with(&cashier)).unwrap();
    assert!(
        cashier_row.contains(&cashier_email),
        "a staff login keeps its email in clear: {cashier_row}"
    );
    for email in [&customer_email, &cashier_email] {
        assert_eq!(
            app.login(Some("acme"), email, PASSWORD).await.status,
            StatusCode::OK,
            "{email}"
        );
    }
    // A second start finds nothing left to do.
    assert_eq!(
        kasho::service::users::seal_login_emails(&app.core)
            .await
            .unwrap(),
        0
    );
}

async fn a_staff_login_given_only_the_customer_role_has_its_email_sealed(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (id, email) = app.user(&t, &["CASHIER"]).await;
    let r = app
        .request(
            axum::http::Method::PUT,
            &format!("/v1/users/{id}/roles"),
            Some(&t.manager_token),
            Some(json!({ "roles": ["CUSTOMER"] })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["email"], email, "{r:?}");
    let stored = app
        .raw_strings(&format!("SELECT email FROM users WHERE id = '{id}'"))
        .await;
    assert!(stored[0].starts_with("kx1."), "{stored:?}");
    assert_eq!(
        app.login(Some("acme"), &email, PASSWORD).await.status,
        StatusCode::OK
    );
}

async fn reinvitation_and_the_console_link_find_a_customer_login_by_its_hash(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = invite_customer(app, &t, EMAIL).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let first = app.invitation_token(EMAIL).await;
    // A new link by mail: sealed under the login's own key while it waits in the outbox.
    let again = app
        .post(
            &format!("/v1/users/{id}/reinvite"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(again.body["email"], EMAIL, "{again:?}");
    let keys = app
        .raw_strings(&format!(
            "SELECT id FROM data_keys WHERE owner = 'login:{id}'"
        ))
        .await;
    let queued = app
        .raw_strings("SELECT message FROM mail_outbox WHERE message IS NOT NULL")
        .await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(
        queued[0].starts_with(&format!("kx1.{}.", keys[0])),
        "sealed under the login's key"
    );
    nowhere_at_rest(app, EMAIL, "reinvited").await;
    let second = app.invitation_token(EMAIL).await;
    assert_ne!(first, second);
    // The console finds the login by its address too (`kasho admin invitation-link`).
    let link = kasho::service::invitations::console_link(&app.core, "acme", EMAIL)
        .await
        .unwrap();
    assert_eq!(link.user_id, id);
    let token = secrecy::ExposeSecret::expose_secret(&link.link)
        .rsplit("#token=")
        .next()
        .unwrap()
        .to_owned();
    let ok = app
        .post(
            "/v1/invitations/accept",
            None,
            json!({ "token": token, "password": PASSWORD }),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(
        app.login(Some("acme"), EMAIL, PASSWORD).await.status,
        StatusCode::OK
    );
    nowhere_at_rest(app, EMAIL, "accepted").await;
}

backend_tests!(
    a_customer_login_email_is_never_stored_in_clear_and_erasure_shreds_it,
    one_email_is_one_login_per_tenant_and_may_repeat_across_tenants,
    logins_stored_before_the_change_are_hashed_and_sealed_at_start,
    a_staff_login_given_only_the_customer_role_has_its_email_sealed,
    reinvitation_and_the_console_link_find_a_customer_login_by_its_hash,
);
