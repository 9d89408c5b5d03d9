//! Issue 14, items 5 to 7: an erasure leaves nothing readable. The identifiers that can name a
//! customer are sealed under its key (so no copy of the database keeps them once the key is
//! destroyed), SQLite zeroes what it deletes, the development mailbox forgets the customer;
//! nothing is created for an erased customer, however the requests race, on one instance or
//! two; and every instance answers the erased state from the moment the erasure commits.

use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Backend, PASSWORD, Resp, TenantFixture, TestApp, send_to};

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn pdf(marker: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("%PDF-1.7\n{marker}\n%%EOF\n"))
}

fn submission(marker: &str) -> Value {
    json!({ "requested_tier": 1, "documents": [
        { "document_type": "passport", "content_type": "application/pdf", "content": pdf(marker) }
    ] })
}

async fn erase(app: &TestApp, t: &TenantFixture, customer: &str) -> Resp {
    app.post(
        &format!("/v1/customers/{customer}/erase"),
        Some(&t.manager_token),
        json!({ "reason": "data_subject_request" }),
    )
    .await
}

/// The `.eml` files of the development mailbox, with their text.
fn mailbox(app: &TestApp) -> Vec<(std::path::PathBuf, String)> {
    let dir = app.data_dir.path().join("mailbox");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|m| (p, m)))
        .collect()
}

/// Every byte at rest, after SQLite has copied its WAL into the file and emptied it.
async fn at_rest(app: &TestApp) -> Vec<u8> {
    if app.backend == Backend::Sqlite {
        let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
        // Retried while a reader (the background checkpointer, say) holds an old snapshot.
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

// ---------------------------------------------------------------- item 5

const EXTERNAL_REF: &str = "CRM-CANARY-7741";
const PROFILE_EMAIL: &str = "ada.canary.5127@example.org";
const USER_AGENT: &str = "CanaryBrowser/7741 (erasure test)";

async fn an_erased_customer_leaves_no_identifier_at_rest_or_in_the_mailbox(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (user_id, login_email) = app.user(&t, &["CUSTOMER"]).await;
    let c = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "user_id": user_id, "external_ref": EXTERNAL_REF,
                    "first_name": "Ada", "last_name": "Canary", "email": PROFILE_EMAIL }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    assert_eq!(c.body["external_ref"], EXTERNAL_REF, "{c:?}");
    let cus = c.body["id"].as_str().unwrap().to_owned();
    // The reference reads back, but is stored sealed under the customer's key from the start:
    // no copy of the database (a WAL segment, a backup) ever holds it in clear.
    let read = app
        .get(&format!("/v1/customers/{cus}"), &t.manager_token)
        .await;
    assert_eq!(read.body["external_ref"], EXTERNAL_REF, "{read:?}");
    let export = app
        .get(&format!("/v1/customers/{cus}/export"), &t.manager_token)
        .await;
    assert_eq!(export.body["customer"]["external_ref"], EXTERNAL_REF);
    let stored = app
        .raw_strings(&format!(
            "SELECT external_ref FROM customers WHERE id = '{cus}'"
        ))
        .await;
    assert!(stored[0].starts_with("kx1."), "stored in clear: {stored:?}");
    assert!(
        !contains(&at_rest(app).await, EXTERNAL_REF),
        "the external reference is readable at rest"
    );

    // The customer signs in (a session with its device facts) and asks for a password reset:
    // the development mailbox now holds a message to its login's address.
    let login = app
        .send(
            axum::http::Request::post("/v1/auth/login")
                .header("content-type", "application/json")
                .header("user-agent", USER_AGENT)
                .body(axum::body::Body::from(
                    json!({ "tenant": t.slug, "email": login_email, "password": PASSWORD })
                        .to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let token = login.body["access_token"].as_str().unwrap().to_owned();
    // The customer sees its own session's device facts; they are sealed at rest.
    let sessions = app.get("/v1/me/sessions", &token).await;
    assert_eq!(
        sessions.body["data"][0]["user_agent"], USER_AGENT,
        "{sessions:?}"
    );
    assert_eq!(
        sessions.body["data"][0]["ip"], "203.0.113.7",
        "{sessions:?}"
    );
    assert!(
        !contains(&at_rest(app).await, USER_AGENT),
        "the session's user agent is readable at rest"
    );
    let reset = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": t.slug, "email": login_email }),
        )
        .await;
    assert!(reset.status.is_success(), "{reset:?}");
    kasho::service::mail::deliver_due(&app.core).await.unwrap();
    let to = format!("To: <{}>", login_email.to_ascii_lowercase());
    assert!(
        mailbox(app).iter().any(|(_, m)| m.contains(&to)),
        "premise: the reset reached the mailbox"
    );

    // A second reset is still queued when the erasure commits: it never reaches the mailbox.
    let queued = app
        .post(
            "/v1/auth/password-reset",
            None,
            json!({ "tenant": t.slug, "email": login_email }),
        )
        .await;
    assert!(queued.status.is_success(), "{queued:?}");

    // The profile's blind index (a keyed hash of the email, stored as hex) is at rest until the
    // erasure deletes it.
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let digest = app
        .core
        .keyring
        .blind_index(&tenant, "email", PROFILE_EMAIL)
        .await
        .unwrap();
    assert!(contains(&at_rest(app).await, &digest), "premise: indexed");

    let e = erase(app, &t, &cus).await;
    assert_eq!(e.status, StatusCode::OK, "{e:?}");
    kasho::service::mail::deliver_due(&app.core).await.unwrap();

    // Nothing at rest names the customer any more: not the reference, not its login's email
    // (SQLite zeroes what it deletes or overwrites, and the WAL is copied back and emptied).
    let bytes = at_rest(app).await;
    assert!(contains(&bytes, &cus), "the check itself works");
    for canary in [
        EXTERNAL_REF,
        login_email.as_str(),
        PROFILE_EMAIL,
        USER_AGENT,
        digest.as_str(),
    ] {
        assert!(!contains(&bytes, canary), "`{canary}` is readable at rest");
    }
    // The mailbox keeps no message to it.
    for (path, m) in mailbox(app) {
        assert!(
            !m.to_ascii_lowercase()
                .contains(&login_email.to_ascii_lowercase()),
            "{} still names the erased customer",
            path.display()
        );
    }
    // The sessions it had keep no address or user agent.
    let devices = app
        .raw_strings(&format!(
            "SELECT COALESCE(ip, '') || COALESCE(user_agent, '') || COALESCE(last_ip, '') \
             FROM sessions WHERE user_id = '{user_id}'"
        ))
        .await;
    assert!(!devices.is_empty());
    assert!(devices.iter().all(String::is_empty), "{devices:?}");
}

async fn external_references_stored_in_clear_are_sealed_at_start(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let c = app
        .post("/v1/customers", Some(&t.manager_token), json!({}))
        .await;
    let cus = c.body["id"].as_str().unwrap().to_owned();
    // As written before issue 14.
    app.raw_sql(&format!(
        "UPDATE customers SET external_ref = '{EXTERNAL_REF}' WHERE id = '{cus}'"
    ))
    .await;
    let sealed = kasho::service::privacy::seal_legacy_identifiers(&app.core)
        .await
        .unwrap();
    assert_eq!(sealed, 1);
    let stored = app
        .raw_strings(&format!(
            "SELECT external_ref FROM customers WHERE id = '{cus}'"
        ))
        .await;
    assert!(stored[0].starts_with("kx1."), "{stored:?}");
    let read = app
        .get(&format!("/v1/customers/{cus}"), &t.manager_token)
        .await;
    assert_eq!(read.body["external_ref"], EXTERNAL_REF, "{read:?}");
    // Idempotent: nothing left to seal.
    assert_eq!(
        kasho::service::privacy::seal_legacy_identifiers(&app.core)
            .await
            .unwrap(),
        0
    );
}

// ---------------------------------------------------------------- item 6

async fn nothing_is_created_for_an_erased_customer_from_a_stale_read(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let c = app
        .post("/v1/customers", Some(&t.manager_token), json!({}))
        .await;
    let cus = c.body["id"].as_str().unwrap().to_owned();
    // Every check a request makes before its transaction has passed...
    let before = app.core.store.kyc_customer(&tenant, &cus).await.unwrap();
    assert_eq!(before.unwrap().status, "active");
    // ...and then the customer is erased.
    assert_eq!(erase(app, &t, &cus).await.status, StatusCode::OK);
    // The account opening commits nothing.
    let account = kasho::store::NewAccount {
        id: kasho::ids::AccountId::generate(),
        tenant_id: tenant.clone(),
        customer_id: kasho::ids::CustomerId::parse(&cus),
        kind: kasho::domain::ledger::AccountKind::Customer,
        currency: "NGN".into(),
        overdraft_limit: 0,
        created_at: app.clock_now(),
    };
    let opened = app.core.store.open_account(&account, &[]).await;
    assert!(
        matches!(opened, Err(kasho::store::StoreError::CustomerErased)),
        "{opened:?}"
    );
    // Neither does a KYC submission.
    let s = kasho::store::kyc::NewKycSubmission {
        id: kasho::ids::KycSubmissionId::generate().to_string(),
        tenant_id: tenant.clone(),
        customer_id: cus.clone(),
        requested_tier: 1,
        tier_at_submission: 0,
        submitted_by: t.manager_id.clone(),
        submitted_at: app.clock_now().as_micros(),
    };
    assert!(
        !app.core
            .store
            .create_kyc_submission(&s, Vec::new(), &[])
            .await
            .unwrap()
    );
    let rows = app
        .raw_strings(&format!(
            "SELECT id FROM accounts WHERE customer_id = '{cus}' \
             UNION ALL SELECT id FROM kyc_submissions WHERE customer_id = '{cus}'"
        ))
        .await;
    assert!(rows.is_empty(), "created for an erased customer: {rows:?}");
}

async fn erasure_and_creation_racing_on_two_instances_leave_nothing_open(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let other = app.second_instance().await;
    let m = t.manager_token.clone();
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    for round in 0..8 {
        let c = app.post("/v1/customers", Some(&m), json!({})).await;
        let cus = c.body["id"].as_str().unwrap().to_owned();
        let erasing = {
            let router = app.router.clone();
            let req = TestApp::post_request(
                &format!("/v1/customers/{cus}/erase"),
                Some(&m),
                &json!({ "reason": "data_subject_request" }),
            );
            tokio::spawn(async move { send_to(&router, req).await })
        };
        let opening = {
            let router = other.clone();
            let req = TestApp::post_request(
                "/v1/accounts",
                Some(&m),
                &json!({ "customer_id": cus, "currency": "NGN" }),
            );
            tokio::spawn(async move { send_to(&router, req).await })
        };
        let submitting = {
            let router = other.clone();
            let req = TestApp::post_request(
                &format!("/v1/customers/{cus}/kyc/submissions"),
                Some(&cashier),
                &submission(&format!("race-{round}")),
            );
            tokio::spawn(async move { send_to(&router, req).await })
        };
        let erased = erasing.await.unwrap();
        let opened = opening.await.unwrap();
        let submitted = submitting.await.unwrap();
        assert_eq!(erased.status, StatusCode::OK, "{erased:?}");
        // Whatever won, the erased customer has no open account, and nothing was committed
        // for it after its erasure (the tenant's audit chain orders the commits).
        let open = app
            .raw_strings(&format!(
                "SELECT id FROM accounts WHERE customer_id = '{cus}' AND status <> 'closed'"
            ))
            .await;
        assert!(open.is_empty(), "round {round}: {open:?} {opened:?}");
        let chain = app.audit_chain(&t.id).await;
        let erased_at = chain
            .iter()
            .find(|e| e.action == "customer.erase" && e.target_id.as_deref() == Some(&cus))
            .unwrap()
            .seq;
        for (resp, action) in [
            (&opened, "account.open"),
            (&submitted, "kyc.submission.create"),
        ] {
            if resp.status.is_success() {
                let id = resp.body["id"].as_str().unwrap();
                let seq = chain
                    .iter()
                    .find(|e| e.action == action && e.target_id.as_deref() == Some(id))
                    .unwrap()
                    .seq;
                assert!(seq < erased_at, "round {round}: {action} after the erasure");
            } else {
                assert_eq!(resp.code(), "customer_erased", "round {round}: {resp:?}");
            }
        }
        // An account opened before the erasure was closed by it: no deposit reaches it.
        if opened.status.is_success() {
            let dep = app
                .post(
                    "/v1/deposits",
                    Some(&m),
                    json!({ "account_id": opened.body["id"], "amount": 500_000,
                            "currency": "NGN" }),
                )
                .await;
            assert!(!dep.status.is_success(), "round {round}: {dep:?}");
        }
    }
}

// ---------------------------------------------------------------- item 7

async fn another_instance_answers_the_erased_state_at_once(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let (_, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let c = app
        .post(
            "/v1/customers",
            Some(&m),
            json!({ "first_name": "Erin", "last_name": "Erased", "external_ref": "crm-erin" }),
        )
        .await;
    let cus = c.body["id"].as_str().unwrap().to_owned();
    let sub = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&cashier),
            submission("erin-passport"),
        )
        .await;
    assert_eq!(sub.status, StatusCode::CREATED, "{sub:?}");
    let sid = sub.body["id"].as_str().unwrap().to_owned();
    let doc = sub.body["documents"][0]["id"].as_str().unwrap().to_owned();
    let rej = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/reject"),
            Some(&officer),
            json!({ "reason": "details_mismatch", "note": "Erin's passport photo is of someone else" }),
        )
        .await;
    assert_eq!(rej.status, StatusCode::OK, "{rej:?}");
    let note = rej.body["decision"]["note_id"].as_str().unwrap().to_owned();
    // The note is sealed under the customer's own key, so the erasure shreds it.
    let key = app
        .raw_strings(&format!(
            "SELECT id FROM data_keys WHERE owner = 'customer:{cus}'"
        ))
        .await;
    let sealed = app
        .raw_strings(&format!("SELECT note FROM staff_notes WHERE id = '{note}'"))
        .await;
    assert!(
        sealed[0].starts_with(&format!("kx1.{}.", key[0])),
        "the decision note is not sealed under the customer's key"
    );

    // A second instance serves all of it, so it holds the customer's key in memory.
    let (other_core, other) = app.instance_with(&[]).await;
    let read = |path: String, token: String| {
        let router = other.clone();
        async move {
            let req = axum::http::Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            send_to(&router, req).await
        }
    };
    let history = format!("/v1/customers/{cus}/kyc");
    let download = format!("/v1/kyc/documents/{doc}/content");
    let note_path = format!("/v1/staff-notes/{note}");
    let notes = format!("/v1/staff-notes?target_id={sid}");
    let customer = format!("/v1/customers/{cus}?unmasked=true");
    assert_eq!(
        read(history.clone(), officer.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        read(download.clone(), officer.clone()).await.status,
        StatusCode::OK
    );
    let n = read(note_path.clone(), officer.clone()).await;
    assert_eq!(n.status, StatusCode::OK, "{n:?}");
    assert_eq!(
        read(customer.clone(), officer.clone()).await.body["first_name"],
        "Erin"
    );
    let ct = app
        .raw_strings(&format!(
            "SELECT content FROM kyc_documents WHERE id = '{doc}'"
        ))
        .await
        .remove(0);
    let ctx = kasho::store::keys::KYC_DOCUMENT_CONTENT.at(&t.id, &doc);
    assert!(other_core.keyring.open(&ctx, &ct).await.is_ok());

    // Erased through the first instance; the clock does not move.
    assert_eq!(erase(app, &t, &cus).await.status, StatusCode::OK);

    // The other instance answers the erased state at once.
    let h = read(history, officer.clone()).await;
    assert_eq!(h.status, StatusCode::NOT_FOUND, "KYC history: {h:?}");
    let d = read(download, officer.clone()).await;
    assert_eq!(d.status, StatusCode::NOT_FOUND, "document: {d:?}");
    let n = read(note_path, officer.clone()).await;
    assert_eq!(n.status, StatusCode::NOT_FOUND, "decision note: {n:?}");
    let l = read(notes, officer.clone()).await;
    assert_eq!(l.status, StatusCode::OK, "{l:?}");
    assert_eq!(l.body["data"], json!([]), "notes list: {l:?}");
    let queue = read("/v1/kyc/submissions".into(), officer.clone()).await;
    assert!(
        !queue.body.to_string().contains(&sid),
        "the queue still lists it: {queue:?}"
    );
    let r = read(customer, officer.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["status"], "erased");
    assert_eq!(r.body["first_name"], Value::Null);
    assert_eq!(r.body["external_ref"], Value::Null);
    // And its cached copy of the customer's key no longer opens anything.
    assert!(
        other_core.keyring.open(&ctx, &ct).await.is_err(),
        "the erased customer's key still opens on the other instance"
    );
}

backend_tests!(
    an_erased_customer_leaves_no_identifier_at_rest_or_in_the_mailbox,
    external_references_stored_in_clear_are_sealed_at_start,
    nothing_is_created_for_an_erased_customer_from_a_stale_read,
    erasure_and_creation_racing_on_two_instances_leave_nothing_open,
    another_instance_answers_the_erased_state_at_once,
);
