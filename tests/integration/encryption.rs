//! Encryption at rest: transfer details and stored answers are sealed under the tenant's data
//! key, a ciphertext moved to another row does not open, nothing readable is left in the
//! database files, and master and tenant keys rotate while money moves, losing nothing.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Backend, Resp, TenantFixture, TestApp, customer_account};

const CANARY_DESCRIPTION: &str = "Zanzibar-canary-description-7731";
const CANARY_COUNTERPARTY: &str = "Quentin Canaryman-4412";
const CANARY_ACCOUNT: &str = "GB29CANARY60161331926819";
const CANARY_METADATA: &str = "canary-order-99173";

fn detailed_deposit(account: &str, amount: i64) -> Value {
    json!({
        "account_id": account, "amount": amount, "currency": "USD",
        "description": CANARY_DESCRIPTION,
        "metadata": { "order": CANARY_METADATA },
        "counterparty": { "name": CANARY_COUNTERPARTY, "account": CANARY_ACCOUNT, "institution": "Canary Bank" }
    })
}

/// A POST with an `Idempotency-Key`.
async fn keyed(app: &TestApp, path: &str, token: &str, key: &str, body: Value) -> Resp {
    let req = axum::http::Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    app.send(req).await
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn transfer_details_are_sealed_at_rest_and_read_back_in_the_clear(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let d = keyed(app, "/v1/deposits", m, "dep-1", detailed_deposit(&a, 5_000)).await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:?}");
    assert_eq!(d.body["description"], CANARY_DESCRIPTION);
    assert_eq!(d.body["metadata"]["order"], CANARY_METADATA);
    assert_eq!(d.body["counterparty"]["name"], CANARY_COUNTERPARTY);
    let id = d.body["id"].as_str().unwrap().to_owned();

    // Read back, listed, and replayed from the stored answer: the same clear values.
    let got = app.get(&format!("/v1/transfers/{id}"), m).await;
    assert_eq!(
        got.body["counterparty"]["account"], CANARY_ACCOUNT,
        "{got:?}"
    );
    let listed = app.get("/v1/transfers", m).await;
    assert_eq!(listed.body["data"][0]["description"], CANARY_DESCRIPTION);
    let again = keyed(app, "/v1/deposits", m, "dep-1", detailed_deposit(&a, 5_000)).await;
    assert_eq!(again.headers["idempotency-replayed"], "true");
    assert_eq!(again.body, d.body);

    // At rest: the column holds a ciphertext naming its key. The stored answer is the
    // outcome's facts (the transfer's id), never a rendered body: no detail reaches it.
    let stored = app
        .raw_strings(&format!("SELECT details FROM transfers WHERE id = '{id}'"))
        .await;
    assert!(stored[0].starts_with("kx1.dek_"), "{stored:?}");
    assert!(!stored[0].contains("canary"));
    let answers = app
        .raw_strings("SELECT response_body FROM idempotency_keys")
        .await;
    assert_eq!(answers, vec![format!(r#"o1:{{"transfer":"{id}"}}"#)]);

    // Invalid details are refused with the parameter named, and nothing is posted.
    let bad = app
        .post(
            "/v1/deposits",
            Some(m),
            json!({ "account_id": a, "amount": 1, "currency": "USD", "metadata": { "k": "x".repeat(501) } }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["error"]["param"], "metadata.k");
    let acc = app.get(&format!("/v1/accounts/{a}"), m).await;
    assert_eq!(acc.body["posted_balance"], 5_000);
}

async fn a_ciphertext_moved_to_another_row_does_not_open(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let first = app
        .post("/v1/deposits", Some(m), detailed_deposit(&a, 10))
        .await;
    let plain = app
        .post(
            "/v1/deposits",
            Some(m),
            json!({ "account_id": a, "amount": 20, "currency": "USD", "description": "ordinary" }),
        )
        .await;
    let (src, dst) = (
        first.body["id"].as_str().unwrap(),
        plain.body["id"].as_str().unwrap(),
    );
    // Only the ciphertext column may be rewritten; copy one transfer's into another's row.
    app.raw_sql(&format!(
        "UPDATE transfers SET details = (SELECT details FROM transfers WHERE id = '{src}') WHERE id = '{dst}'"
    ))
    .await;
    let r = app.get(&format!("/v1/transfers/{dst}"), m).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
    assert!(!r.body.to_string().contains("canary"), "{r:?}");
    // The original still opens where it belongs.
    let ok = app.get(&format!("/v1/transfers/{src}"), m).await;
    assert_eq!(ok.body["description"], CANARY_DESCRIPTION);
    // And the money columns stay append-only.
    assert!(
        app.try_raw_sql(&format!(
            "UPDATE transfers SET amount = 1 WHERE id = '{src}'"
        ))
        .await
        .is_err()
    );
}

async fn nothing_readable_is_left_at_rest(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    for i in 0..5 {
        let r = keyed(
            app,
            "/v1/deposits",
            m,
            &format!("k{i}"),
            detailed_deposit(&a, 1_000 + i),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
    let r = app
        .post(
            "/v1/transfers",
            Some(m),
            json!({ "amount": 5, "currency": "USD", "debit_account_id": a, "credit_account_id": b,
                    "description": CANARY_DESCRIPTION, "metadata": { "ref": CANARY_METADATA } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    // A customer with personal data, found by its blind indexes and rectified.
    use crate::logs::{CANARY_EMAIL, CANARY_FIRST, CANARY_LAST, CANARY_NIN, CANARY_PHONE};
    let c = app
        .post(
            "/v1/customers",
            Some(m),
            json!({ "first_name": CANARY_FIRST, "last_name": CANARY_LAST, "email": CANARY_EMAIL,
                    "phone": CANARY_PHONE, "date_of_birth": "1990-04-12", "nationality": "NG",
                    "address": { "line1": "12 Canarywharf Road", "city": "Lagos", "country": "NG" },
                    "national_ids": [{ "type": "NIN", "number": CANARY_NIN }] }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let found = app
        .get(
            &format!("/v1/customers?email={}", CANARY_EMAIL.replace('@', "%40")),
            m,
        )
        .await;
    assert_eq!(found.body["data"][0]["id"], c.body["id"], "{found:?}");
    // An identity document submitted for KYC, and a decision whose note names the customer.
    let doc = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("%PDF-1.7\nPassport of {CANARY_FIRST} {CANARY_LAST}, KYCDOC-CANARY-5531\n%%EOF\n"),
    );
    let sub = app
        .post(
            &format!(
                "/v1/customers/{}/kyc/submissions",
                c.body["id"].as_str().unwrap()
            ),
            Some(m),
            json!({ "requested_tier": 1, "documents": [
                { "document_type": "passport", "content_type": "application/pdf", "content": doc }
            ] }),
        )
        .await;
    assert_eq!(sub.status, StatusCode::CREATED, "{sub:?}");
    let bytes = app.bytes_at_rest().await;
    assert!(bytes.len() > 10_000, "read {} bytes", bytes.len());
    // The check itself works: an id we know is stored in the clear is found.
    assert!(contains(&bytes, &a));
    for canary in [
        CANARY_DESCRIPTION,
        CANARY_COUNTERPARTY,
        CANARY_ACCOUNT,
        CANARY_METADATA,
        CANARY_FIRST,
        CANARY_LAST,
        CANARY_EMAIL,
        CANARY_PHONE,
        CANARY_NIN,
        "Canarywharf",
        "KYCDOC-CANARY-5531",
    ] {
        assert!(!contains(&bytes, canary), "`{canary}` is readable at rest");
    }
}

/// Transfers with details, from several tasks, while `during` runs.
async fn transfers_while<F: std::future::Future<Output = ()>>(
    app: &TestApp,
    t: &TenantFixture,
    accounts: &[String],
    during: F,
) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for c in 0..4 {
        let router = app.router.clone();
        let token = t.manager_token.clone();
        let accounts = accounts.to_vec();
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let mut posted = Vec::new();
            for i in 0..25 {
                let description = format!("rotation-test {c}/{i}");
                let body = json!({ "amount": 1, "currency": "USD",
                    "debit_account_id": accounts[(c + i) % accounts.len()],
                    "credit_account_id": accounts[(c + i + 1) % accounts.len()],
                    "description": description });
                let req = axum::http::Request::post("/v1/transfers")
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("rot-{c}-{i}"))
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap();
                let resp = router.clone().oneshot(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                let bytes = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                // Reads run alongside: the list opens whatever key version sealed each row.
                let req = axum::http::Request::get("/v1/transfers?limit=50")
                    .header("authorization", format!("Bearer {token}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                let list = router.clone().oneshot(req).await.unwrap();
                assert_eq!(list.status(), StatusCode::OK);
                posted.push((v["id"].as_str().unwrap().to_owned(), description));
            }
            posted
        }));
    }
    during.await;
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

async fn master_and_tenant_keys_rotate_while_money_moves_and_nothing_is_lost(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let mut accounts = Vec::new();
    for _ in 0..4 {
        let a = customer_account(app, &t, "USD").await;
        app.post("/v1/deposits", Some(&m), detailed_deposit(&a, 10_000))
            .await;
        accounts.push(a);
    }
    let keyring = app.core.keyring.clone();
    let tenant = kasho::ids::TenantId::from_trusted(t.id.clone());
    let posted = transfers_while(app, &t, &accounts, async {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let r = keyring.rotate_master(&|_, _| {}).await.unwrap();
        assert_eq!(r.version, 2);
        assert_eq!(r.retired, vec![1]);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let r = keyring.rotate_tenant(&tenant, &|_, _| {}).await.unwrap();
        assert_eq!(r.version, 2);
        assert!(r.reencrypted > 0, "{r:?}");
    })
    .await;
    // A request that took the old version just before the rotation may seal under it after
    // the re-encryption passed by: the retired version keeps its material for the grace
    // period, and the background pass re-encrypts such late values before dropping it.
    keyring.run_pending().await.unwrap();

    // Every transfer reads back with its own description.
    for (id, description) in &posted {
        let r = app.get(&format!("/v1/transfers/{id}"), &m).await;
        assert_eq!(r.body["description"], description.as_str(), "{r:?}");
    }
    // Replays of stored answers still open.
    let replay = keyed(
        app,
        "/v1/transfers",
        &m,
        "rot-0-0",
        json!({ "amount": 1, "currency": "USD", "debit_account_id": accounts[0],
                     "credit_account_id": accounts[1], "description": "rotation-test 0/0" }),
    )
    .await;
    assert_eq!(replay.headers["idempotency-replayed"], "true", "{replay:?}");

    // The old versions are retired: nothing is sealed under them, and once the grace period
    // for reads already under way has passed, no key material is left either.
    let material = app
        .raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM master_keys WHERE status = 'retired' AND wrapped IS NOT NULL")
        .await;
    assert_eq!(
        material[0], "1",
        "a just-retired version keeps its material for the grace period"
    );
    for _ in 0..2 {
        // Past the grace period: late values (if any) moved, then the material dropped.
        app.clock
            .advance_seconds(kasho::service::keys::RETIREMENT_GRACE_SECONDS + 1);
        keyring.run_pending().await.unwrap();
    }
    let masters = app
        .raw_strings(
            "SELECT status || ':' || COALESCE(wrapped, '-') FROM master_keys ORDER BY version",
        )
        .await;
    assert_eq!(masters[0], "retired:-", "{masters:?}");
    assert!(masters[1].starts_with("active:"));
    let tenant_keys = app
        .raw_strings(&format!(
            "SELECT status || ':' || COALESCE(wrapped, '-') FROM data_keys WHERE tenant_id = '{}' AND owner = 'tenant' ORDER BY version",
            t.id
        ))
        .await;
    assert_eq!(tenant_keys.len(), 2, "{tenant_keys:?}");
    assert_eq!(tenant_keys[0], "retired:-");
    let old_prefix = app
        .raw_strings(&format!(
            "SELECT id FROM data_keys WHERE tenant_id = '{}' AND owner = 'tenant' AND version = 1",
            t.id
        ))
        .await;
    let prefix = format!("kx1.{}.1.", old_prefix[0]);
    for col in kasho::store::keys::ENCRYPTED_COLUMNS {
        let n =
            kasho::store::keys::KeyStore::count_encrypted(app.core.store.as_ref(), *col, &prefix)
                .await
                .unwrap();
        assert_eq!(n, 0, "{}.{} still sealed under v1", col.table, col.column);
    }
    let rewrapped = app
        .raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM data_keys WHERE kek_version <> 2 AND wrapped IS NOT NULL")
        .await;
    assert_eq!(rewrapped[0], "0");

    // Money is untouched: 4 deposits of 10,000 on customer accounts, transfers move 1 each.
    let mut total = 0;
    for a in &accounts {
        total += app.get(&format!("/v1/accounts/{a}"), &m).await.body["posted_balance"]
            .as_i64()
            .unwrap();
    }
    assert_eq!(total, 40_000);
    assert_eq!(posted.len(), 100);

    // A second instance started after the rotation opens everything too.
    let second = app.second_instance().await;
    let resp = tower::ServiceExt::oneshot(
        second,
        axum::http::Request::get(format!("/v1/transfers/{}", posted[0].0))
            .header("authorization", format!("Bearer {m}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn data_keys_rotate_before_their_encryption_budget_runs_out(backend: Backend) {
    let app = TestApp::with_config(backend, &[("key_rotate_after_encryptions", "40")]).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(&app, &t, "USD").await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let r = app
            .post(
                "/v1/deposits",
                Some(m),
                json!({ "account_id": a, "amount": 1, "currency": "USD", "description": format!("budget {i}") }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let versions = app
        .raw_strings(&format!(
            "SELECT CAST(version AS TEXT) || ':' || status || ':' || CAST(encryptions AS TEXT) FROM data_keys \
             WHERE tenant_id = '{}' AND owner = 'tenant' ORDER BY version",
            t.id
        ))
        .await;
    assert!(
        versions.len() >= 2,
        "no rotation after 60 encryptions: {versions:?}"
    );
    // No version was used past its budget.
    for v in &versions {
        let used: i64 = v.rsplit(':').next().unwrap().parse().unwrap();
        assert!(used <= 40 + 10, "{versions:?}");
    }
    // Spent versions keep opening what they sealed; only the newest seals.
    let statuses: Vec<String> = versions
        .iter()
        .map(|v| v.split(':').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("active"),
        "{versions:?}"
    );
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| s == "spent"),
        "{versions:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let r = app.get(&format!("/v1/transfers/{id}"), m).await;
        assert_eq!(r.body["description"], format!("budget {i}"));
    }
    // An operator's rotation then moves everything off the spent versions and retires them.
    let tenant = kasho::ids::TenantId::from_trusted(t.id.clone());
    let r = app
        .core
        .keyring
        .rotate_tenant(&tenant, &|_, _| {})
        .await
        .unwrap();
    assert!(r.reencrypted >= 60, "{r:?}");
    app.clock
        .advance_seconds(kasho::service::keys::RETIREMENT_GRACE_SECONDS + 1);
    app.core.keyring.run_pending().await.unwrap();
    let left = app
        .raw_strings(&format!(
            "SELECT status FROM data_keys WHERE tenant_id = '{}' AND owner = 'tenant' AND wrapped IS NOT NULL",
            t.id
        ))
        .await;
    // 60 values do not fit one 40-encryption budget: at most the last two versions hold keys.
    assert!(
        left.len() <= 2 && left.contains(&"active".to_owned()),
        "{left:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let r = app.get(&format!("/v1/transfers/{id}"), m).await;
        assert_eq!(r.body["description"], format!("budget {i}"));
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_rotate_before_their_budget_runs_out_sqlite() {
    data_keys_rotate_before_their_encryption_budget_runs_out(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_rotate_before_their_budget_runs_out_postgres() {
    data_keys_rotate_before_their_encryption_budget_runs_out(Backend::Postgres).await;
}

async fn a_value_sealed_late_under_a_retired_version_is_moved_before_its_key_goes(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let d = app
        .post("/v1/deposits", Some(m), detailed_deposit(&a, 100))
        .await;
    let id = d.body["id"].as_str().unwrap().to_owned();
    let v1 = app
        .raw_strings(&format!("SELECT details FROM transfers WHERE id = '{id}'"))
        .await
        .remove(0);
    let tenant = kasho::ids::TenantId::from_trusted(t.id.clone());
    let keyring = app.core.keyring.clone();
    keyring.rotate_tenant(&tenant, &|_, _| {}).await.unwrap();
    // A request that held version 1 writes its value after the re-encryption passed by.
    app.raw_sql(&format!(
        "UPDATE transfers SET details = '{v1}' WHERE id = '{id}'"
    ))
    .await;
    let r = app.get(&format!("/v1/transfers/{id}"), m).await;
    assert_eq!(
        r.body["description"], CANARY_DESCRIPTION,
        "retired but not yet purged: {r:?}"
    );
    app.clock
        .advance_seconds(kasho::service::keys::RETIREMENT_GRACE_SECONDS + 1);
    keyring.run_pending().await.unwrap();
    // Found at purge time: moved to the active version instead of losing its key.
    let now = app
        .raw_strings(&format!("SELECT details FROM transfers WHERE id = '{id}'"))
        .await
        .remove(0);
    assert_ne!(now, v1);
    assert!(now.contains(".2."), "{now}");
    app.clock
        .advance_seconds(kasho::service::keys::RETIREMENT_GRACE_SECONDS + 1);
    keyring.run_pending().await.unwrap();
    let keys = app
        .raw_strings(&format!(
            "SELECT status || ':' || CASE WHEN wrapped IS NULL THEN 'gone' ELSE 'kept' END FROM data_keys \
             WHERE tenant_id = '{}' AND owner = 'tenant' ORDER BY version",
            t.id
        ))
        .await;
    assert_eq!(keys, vec!["retired:gone", "active:kept"]);
    let r = app.get(&format!("/v1/transfers/{id}"), m).await;
    assert_eq!(r.body["description"], CANARY_DESCRIPTION, "{r:?}");
}

async fn details_written_before_encryption_are_read_and_then_sealed_by_a_rotation(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let d = app
        .post(
            "/v1/deposits",
            Some(m),
            json!({ "account_id": a, "amount": 5, "currency": "USD" }),
        )
        .await;
    let id = d.body["id"].as_str().unwrap().to_owned();
    // A row as migration 0004 found it: a plaintext description in the column.
    app.raw_sql(&format!(
        "UPDATE transfers SET details = 'legacy plaintext note' WHERE id = '{id}'"
    ))
    .await;
    let r = app.get(&format!("/v1/transfers/{id}"), m).await;
    assert_eq!(r.body["description"], "legacy plaintext note", "{r:?}");
    let tenant = kasho::ids::TenantId::from_trusted(t.id.clone());
    let rotation = app
        .core
        .keyring
        .rotate_tenant(&tenant, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(rotation.legacy_sealed, 1, "{rotation:?}");
    let stored = app
        .raw_strings(&format!("SELECT details FROM transfers WHERE id = '{id}'"))
        .await
        .remove(0);
    assert!(
        stored.starts_with("kx1.") && !stored.contains("legacy"),
        "{stored}"
    );
    let r = app.get(&format!("/v1/transfers/{id}"), m).await;
    assert_eq!(r.body["description"], "legacy plaintext note", "{r:?}");
}

async fn an_erased_customers_key_stops_opening_on_every_instance(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let (_, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let c = app
        .post(
            "/v1/customers",
            Some(m),
            json!({ "first_name": "Erin", "last_name": "Erased", "email": "erin@example.org" }),
        )
        .await;
    let cid = c.body["id"].as_str().unwrap().to_owned();
    let doc = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"%PDF-1.7\nErin's passport\n%%EOF\n",
    );
    let sub = app
        .post(
            &format!("/v1/customers/{cid}/kyc/submissions"),
            Some(m),
            json!({ "requested_tier": 1, "documents": [
                { "document_type": "passport", "content_type": "application/pdf", "content": doc }
            ] }),
        )
        .await;
    assert_eq!(sub.status, StatusCode::CREATED, "{sub:?}");
    let doc_id = sub.body["documents"][0]["id"].as_str().unwrap().to_owned();
    // A second instance opens the customer's data, so it holds the customer's key in memory.
    let (other_core, other) = app.instance_with(&[]).await;
    let get = |path: String, token: String| {
        let router = other.clone();
        async move {
            let req = axum::http::Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            tower::ServiceExt::oneshot(router, req).await.unwrap()
        }
    };
    let unmasked = format!("/v1/customers/{cid}?unmasked=true");
    let download = format!("/v1/kyc/documents/{doc_id}/content");
    assert_eq!(
        get(unmasked.clone(), m.clone()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get(download.clone(), officer.clone()).await.status(),
        StatusCode::OK
    );
    // Erased through the first instance.
    let e = app
        .post(
            &format!("/v1/customers/{cid}/erase"),
            Some(m),
            json!({ "reason": "data_subject_request" }),
        )
        .await;
    assert_eq!(e.status, StatusCode::OK, "{e:?}");
    // The other instance refuses the document at once, and its cached copy of the customer's
    // key no longer opens anything either: a customer's key is checked against its row on
    // every use (issue 14 item 7).
    assert_ne!(
        get(download.clone(), officer.clone()).await.status(),
        StatusCode::OK
    );
    let ct = app
        .raw_strings(&format!(
            "SELECT content FROM kyc_documents WHERE id = '{doc_id}'"
        ))
        .await
        .remove(0);
    let ctx = kasho::crypto::envelope::Context {
        tenant: &t.id,
        table: "kyc_documents",
        column: "content",
        row: &doc_id,
    };
    assert!(app.core.keyring.open(&ctx, &ct).await.is_err());
    assert!(
        other_core.keyring.open(&ctx, &ct).await.is_err(),
        "the erased customer's document still opens on the other instance"
    );
    let r = get(unmasked, m.clone()).await;
    let bytes = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("Erin"),
        "personal data after erasure"
    );
}

fn kasho(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(args)
        .arg("--data-dir")
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

async fn an_interrupted_master_rotation_resumes_from_the_command_line(app: &TestApp) {
    let admin = app.platform_admin().await;
    let mut transfers = Vec::new();
    for slug in ["acme", "bravo", "charlie"] {
        let t = app.tenant(&admin, slug).await;
        let a = customer_account(app, &t, "USD").await;
        let d = app
            .post(
                "/v1/deposits",
                Some(&t.manager_token),
                detailed_deposit(&a, 100),
            )
            .await;
        transfers.push((
            t.manager_token.clone(),
            d.body["id"].as_str().unwrap().to_owned(),
        ));
    }
    // The rotation dies after rewrapping one data key (as a killed process would).
    let keyring = app.core.keyring.clone();
    let died = tokio::spawn(async move {
        keyring
            .rotate_master(&|done, _| assert!(done < 1, "interrupted"))
            .await
    })
    .await;
    assert!(died.is_err(), "the rotation was meant to be interrupted");
    let state = app
        .raw_strings(
            "SELECT CAST(version AS TEXT) || ':' || status FROM master_keys ORDER BY version",
        )
        .await;
    assert_eq!(state, vec!["1:retiring", "2:active"]);
    // Meanwhile everything still opens: v1 stays readable until nothing needs it.
    for (token, id) in &transfers {
        let r = app.get(&format!("/v1/transfers/{id}"), token).await;
        assert_eq!(r.body["description"], CANARY_DESCRIPTION, "{r:?}");
    }
    let (ok, out) = kasho(app, &["keys", "rotate-master"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("resumed rotation to master key version 2"),
        "{out}"
    );
    assert!(out.contains("retired versions: [1]"), "{out}");
    let (ok, out) = kasho(app, &["keys", "rotate-tenant", "bravo"]);
    assert!(ok, "{out}");
    assert!(out.contains("tenant bravo: data key version 2"), "{out}");
    let (ok, out) = kasho(app, &["keys", "status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("master key v1: retired") && out.contains("master key v2: active"),
        "{out}"
    );
    for (token, id) in &transfers {
        let r = app.get(&format!("/v1/transfers/{id}"), token).await;
        assert_eq!(r.body["description"], CANARY_DESCRIPTION, "{r:?}");
    }
    let (ok, out) = kasho(app, &["audit", "verify"]);
    assert!(ok, "{out}");
}

backend_tests!(
    transfer_details_are_sealed_at_rest_and_read_back_in_the_clear,
    a_ciphertext_moved_to_another_row_does_not_open,
    nothing_readable_is_left_at_rest,
    master_and_tenant_keys_rotate_while_money_moves_and_nothing_is_lost,
    an_interrupted_master_rotation_resumes_from_the_command_line,
    a_value_sealed_late_under_a_retired_version_is_moved_before_its_key_goes,
    details_written_before_encryption_are_read_and_then_sealed_by_a_rotation,
    an_erased_customers_key_stops_opening_on_every_instance,
);
