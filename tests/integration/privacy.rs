//! Data-subject rights: the export of everything held about a customer, erasure by
//! crypto-shredding, and the restriction of processing.

use axum::http::StatusCode;
use kasho::crypto::envelope::Context;
use kasho::ids::TenantId;
use kasho::service::keys::KeyOwner;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{PASSWORD, Resp, TenantFixture, TestApp};

const PROFILE: &str = r#"{"name":"Ada Lovelace","email":"ada@example.com"}"#;

/// A customer (optionally linked to a new CUSTOMER user) with one USD account.
struct Subject {
    customer: String,
    account: String,
    user_id: Option<String>,
    email: Option<String>,
}

async fn subject(app: &TestApp, t: &TenantFixture, with_user: bool, external_ref: &str) -> Subject {
    let (user_id, email) = if with_user {
        let (id, email) = app.user(t, &["CUSTOMER"]).await;
        (Some(id), Some(email))
    } else {
        (None, None)
    };
    let c = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "user_id": user_id, "external_ref": external_ref }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let customer = c.body["id"].as_str().unwrap().to_owned();
    let a = app
        .post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": customer, "currency": "USD" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    Subject {
        customer,
        account: a.body["id"].as_str().unwrap().to_owned(),
        user_id,
        email,
    }
}

fn tenant_id(t: &TenantFixture) -> TenantId {
    TenantId::parse(&t.id).unwrap()
}

/// Seals personal data for the customer the way the profile code will, and stores it.
async fn seal_profile(app: &TestApp, t: &TenantFixture, customer: &str) -> String {
    let sealed = app
        .core
        .keyring
        .seal(
            &tenant_id(t),
            &KeyOwner::Customer(customer.to_owned()),
            kasho::store::keys::CUSTOMER_PII,
            customer,
            PROFILE.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        app.raw_sql(&format!(
            "UPDATE customers SET pii = '{sealed}' WHERE id = '{customer}'"
        ))
        .await,
        1
    );
    let digest = app
        .core
        .keyring
        .blind_index(&tenant_id(t), "email", "ada@example.com")
        .await
        .unwrap();
    app.raw_sql(&format!(
        "INSERT INTO customer_lookup (tenant_id, field, digest, customer_id) VALUES ('{}', 'email', '{digest}', '{customer}')",
        t.id
    ))
    .await;
    sealed
}

async fn cash(app: &TestApp, token: &str, path: &str, account: &str, amount: i64) -> Resp {
    app.post(
        path,
        Some(token),
        json!({ "account_id": account, "amount": amount, "currency": "USD" }),
    )
    .await
}

async fn transfer(app: &TestApp, token: &str, from: &str, to: &str, amount: i64) -> Resp {
    app.post(
        "/v1/transfers",
        Some(token),
        json!({ "amount": amount, "currency": "USD", "debit_account_id": from, "credit_account_id": to }),
    )
    .await
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn balance(app: &TestApp, t: &TenantFixture, account: &str) -> i64 {
    let r = app
        .get(&format!("/v1/accounts/{account}"), &t.manager_token)
        .await;
    r.body["posted_balance"].as_i64().unwrap()
}

/// Whether the tenant's audit chain holds `action` on `target` with this outcome and reason.
async fn audited(
    app: &TestApp,
    t: &TenantFixture,
    action: &str,
    target: Option<&str>,
    outcome: &str,
    reason: Option<&str>,
) -> bool {
    app.audit_chain(&t.id).await.iter().any(|r| {
        r.action == action
            && (target.is_none() || r.target_id.as_deref() == target)
            && r.outcome == outcome
            && (reason.is_none() || r.reason.as_deref() == reason)
    })
}

async fn export_holds_the_subjects_data_and_nothing_of_another(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "export").await;
    let m = &t.manager_token;
    let ada = subject(app, &t, true, "crm-ada").await;
    let bob = subject(app, &t, false, "crm-bob").await;
    seal_profile(app, &t, &ada.customer).await;

    let ada_in = cash(app, m, "/v1/deposits", &ada.account, 1_000).await;
    assert_eq!(ada_in.status, StatusCode::CREATED, "{ada_in:?}");
    let bob_in = cash(app, m, "/v1/deposits", &bob.account, 700).await;
    let bob_out = cash(app, m, "/v1/withdrawals", &bob.account, 200).await;
    let ada_to_bob = transfer(app, m, &ada.account, &bob.account, 300).await;
    assert_eq!(ada_to_bob.status, StatusCode::CREATED, "{ada_to_bob:?}");
    let hold = app
        .post(
            "/v1/holds",
            Some(m),
            json!({ "account_id": ada.account, "amount": 50, "currency": "USD", "expires_in_seconds": 600 }),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");

    // The subject signs in itself (an audit record whose actor is its user).
    let ada_token = app
        .token(Some(&t.slug), ada.email.as_deref().unwrap())
        .await;

    // Staff submit Ada's identity document for verification: the export carries the history.
    let doc = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"%PDF-1.7\nexport-test\n%%EOF\n",
    );
    let sub = app
        .post(
            &format!("/v1/customers/{}/kyc/submissions", ada.customer),
            Some(m),
            json!({ "requested_tier": 1, "documents": [
                { "document_type": "passport", "content_type": "application/pdf", "content": doc }
            ] }),
        )
        .await;
    assert_eq!(sub.status, StatusCode::CREATED, "{sub:?}");

    let path = format!("/v1/customers/{}/export", ada.customer);
    let e = app.get(&path, m).await;
    assert_eq!(e.status, StatusCode::OK, "{e:?}");
    assert_eq!(e.headers["cache-control"], "no-store");
    let disposition = e.headers["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let b = &e.body;
    assert_eq!(b["object"], "customer_export");
    assert_eq!(b["customer"]["id"], ada.customer.as_str());
    assert_eq!(b["customer"]["status"], "active");
    assert_eq!(b["customer"]["external_ref"], "crm-ada");
    assert_eq!(b["customer"]["user_id"], ada.user_id.as_deref().unwrap());
    assert_eq!(b["customer"]["processing_restricted"], false);
    assert_eq!(b["customer"]["profile"]["name"], "Ada Lovelace");
    assert_eq!(b["kyc"]["tier"], 0);
    assert_eq!(b["kyc"]["history"][0]["id"], sub.body["id"], "{}", b["kyc"]);
    assert_eq!(
        b["kyc"]["history"][0]["documents"][0]["document_type"],
        "passport"
    );
    assert!(
        b["kyc"]["history"][0]["documents"][0]
            .get("content")
            .is_none()
    );
    assert_eq!(b["truncated"], json!([]));
    assert_eq!(ids(&b["accounts"]), vec![ada.account.clone()]);
    assert_eq!(b["accounts"][0]["posted_balance"], 700);
    assert_eq!(ids(&b["holds"]), vec![hold.body["id"].as_str().unwrap()]);
    let transfers = ids(&b["transfers"]);
    for mine in [&ada_in, &ada_to_bob] {
        assert!(transfers.contains(&mine.body["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(transfers.len(), 2, "{transfers:?}");
    // The transfer to Bob shows only Ada's resulting balance.
    let to_bob = b["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == ada_to_bob.body["id"])
        .unwrap();
    assert_eq!(
        to_bob["balances"],
        json!([{ "account_id": ada.account, "balance_after": 700 }])
    );
    let events = b["audit_events"].as_array().unwrap();
    let has = |action: &str, target: &str| {
        events
            .iter()
            .any(|x| x["action"] == action && x["target_id"] == target)
    };
    assert!(has("customer.create", &ada.customer));
    assert!(has("account.open", &ada.account));
    assert!(has("deposit.create", ada_in.body["id"].as_str().unwrap()));
    assert!(has("hold.create", hold.body["id"].as_str().unwrap()));
    assert!(
        events.iter().any(
            |x| x["action"] == "auth.login" && x["actor_id"] == ada.user_id.as_deref().unwrap()
        ),
        "the subject's own sign-in is part of the export"
    );
    // Staff members' IP addresses are not the subject's data.
    assert!(
        events
            .iter()
            .filter(|x| x["actor_id"] == t.manager_id.as_str())
            .all(|x| x["ip"].is_null())
    );
    // Nothing of Bob: his customer record, his own transfers, his reference.
    let text = b.to_string();
    for other in [
        bob.customer.as_str(),
        "crm-bob",
        bob_in.body["id"].as_str().unwrap(),
        bob_out.body["id"].as_str().unwrap(),
    ] {
        assert!(!text.contains(other), "the export leaks {other}");
    }
    assert!(
        audited(
            app,
            &t,
            "customer.export",
            Some(&ada.customer),
            "success",
            None
        )
        .await
    );

    // A CUSTOMER exports itself, but not another customer (404, like a missing one).
    let own = app.get(&path, &ada_token).await;
    assert_eq!(own.status, StatusCode::OK, "{own:?}");
    assert_eq!(own.body["customer"]["id"], ada.customer.as_str());
    let other = app
        .get(
            &format!("/v1/customers/{}/export", bob.customer),
            &ada_token,
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{other:?}");
    // An AGENT may not export at all.
    let (_, agent) = app.user_token(&t, &["AGENT"]).await;
    assert_eq!(app.get(&path, &agent).await.status, StatusCode::FORBIDDEN);
    // Another tenant's customer is not found.
    let other_tenant = app.tenant(&admin, "elsewhere").await;
    let r = app.get(&path, &other_tenant.manager_token).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
}

async fn erasure_waits_for_a_zero_balance_then_shreds_the_subject(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "erase").await;
    let m = &t.manager_token;
    let tenant = tenant_id(&t);
    let ada = subject(app, &t, true, "crm-ada").await;
    let bob = subject(app, &t, false, "crm-bob").await;
    let sealed = seal_profile(app, &t, &ada.customer).await;
    let ada_token = app
        .token(Some(&t.slug), ada.email.as_deref().unwrap())
        .await;
    let erase_path = format!("/v1/customers/{}/erase", ada.customer);
    let erase = |token: &str, reason: &str| {
        let (token, body) = (token.to_owned(), json!({ "reason": reason }));
        let path = erase_path.clone();
        async move { app.post(&path, Some(&token), body).await }
    };

    // Who may erase, and with what reason.
    assert_eq!(
        erase(&ada_token, "data_subject_request").await.status,
        StatusCode::FORBIDDEN
    );
    let bad = erase(m, "she asked nicely").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["error"]["param"], "reason");
    let missing = app.post(&erase_path, Some(m), json!({})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{missing:?}");

    // Refused with a balance, with an open hold, and with pending credits; nothing changes.
    assert_eq!(
        cash(app, m, "/v1/deposits", &ada.account, 500).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        cash(app, m, "/v1/deposits", &bob.account, 900).await.status,
        StatusCode::CREATED
    );
    let blocked = erase(m, "data_subject_request").await;
    assert_eq!(
        blocked.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{blocked:?}"
    );
    assert_eq!(blocked.code(), "erasure_blocked");
    let message = blocked.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&ada.account) && message.contains("balance"),
        "{message}"
    );
    assert!(!message.contains("Ada"), "{message}");
    assert_eq!(
        cash(app, m, "/v1/withdrawals", &ada.account, 500)
            .await
            .status,
        StatusCode::CREATED
    );
    let hold = app
        .post(
            "/v1/holds",
            Some(m),
            json!({ "account_id": bob.account, "credit_account_id": ada.account, "amount": 40, "currency": "USD", "expires_in_seconds": 600 }),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let pending = erase(m, "data_subject_request").await;
    assert_eq!(pending.code(), "erasure_blocked");
    let message = pending.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("pending credits"), "{message}");
    assert!(
        message.contains(hold.body["id"].as_str().unwrap()),
        "{message}"
    );
    assert!(
        audited(
            app,
            &t,
            "customer.erase",
            Some(&ada.customer),
            "failure",
            Some("erasure_blocked")
        )
        .await
    );
    // Nothing of the refused attempts was applied.
    let export = app
        .get(&format!("/v1/customers/{}/export", ada.customer), m)
        .await;
    assert_eq!(export.body["customer"]["status"], "active");
    assert_eq!(export.body["customer"]["profile"]["name"], "Ada Lovelace");
    assert_eq!(export.body["accounts"][0]["status"], "active");
    let void = app
        .post(
            &format!("/v1/holds/{}/void", hold.body["id"].as_str().unwrap()),
            Some(m),
            json!({}),
        )
        .await;
    assert_eq!(void.status, StatusCode::OK, "{void:?}");

    let sums_before = app.core.store.balance_sums(&tenant).await.unwrap();
    let entries_before = app
        .get(
            &format!("/v1/accounts/{}/entries?limit=100", ada.account),
            m,
        )
        .await;
    assert_eq!(entries_before.body["data"].as_array().unwrap().len(), 2);

    // Now it goes through, in one step.
    let done = erase(m, "data_subject_request").await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert_eq!(done.body["status"], "erased");
    assert_eq!(done.body["accounts_closed"], json!([ada.account]));
    assert_eq!(done.body["user_disabled"], ada.user_id.as_deref().unwrap());
    assert!(done.body["keys_destroyed"].as_u64().unwrap() >= 1);
    assert_eq!(done.body["lookups_deleted"], 1);
    assert!(
        audited(
            app,
            &t,
            "customer.erase",
            Some(&ada.customer),
            "success",
            Some("data_subject_request")
        )
        .await
    );
    assert!(
        audited(
            app,
            &t,
            "user.disable",
            ada.user_id.as_deref(),
            "success",
            Some("customer_erased")
        )
        .await
    );

    // No key material is left for any version of the customer's data key.
    let owner = format!("customer:{}", ada.customer);
    let key = app
        .core
        .store
        .latest_data_key(&t.id, &owner)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.status, "destroyed");
    assert!(key.wrapped.is_none());
    assert_eq!(
        app.raw_sql(&format!(
            "UPDATE data_keys SET status = status WHERE owner = '{owner}' AND (wrapped IS NOT NULL OR status <> 'destroyed')"
        ))
        .await,
        0
    );
    // The personal data and the blind indexes are gone.
    assert_eq!(
        app.raw_sql(&format!(
            "UPDATE customers SET status = status WHERE id = '{}' AND (pii IS NOT NULL OR external_ref IS NOT NULL)",
            ada.customer
        ))
        .await,
        0
    );
    assert_eq!(
        app.raw_sql(&format!(
            "UPDATE customer_lookup SET field = field WHERE customer_id = '{}'",
            ada.customer
        ))
        .await,
        0
    );
    // Even a copy of the old ciphertext (a backup) no longer opens, with the master key at hand.
    let ctx = Context {
        tenant: &t.id,
        table: "customers",
        column: "pii",
        row: &ada.customer,
    };
    let reopened = app.core.keyring.open_text(&ctx, &sealed).await;
    assert!(
        matches!(
            &reopened,
            Err(kasho::error::AppError::Unprocessable {
                code: "key_destroyed",
                ..
            })
        ),
        "{reopened:?}"
    );
    // Nothing can be sealed for the subject any more.
    let resealed = app
        .core
        .keyring
        .seal(
            &tenant,
            &KeyOwner::Customer(ada.customer.clone()),
            kasho::store::keys::CUSTOMER_PII,
            &ada.customer,
            b"{}",
        )
        .await;
    assert!(resealed.is_err());

    // The ledger is untouched: the same sums, the same entries, under the same ids.
    assert_eq!(
        app.core.store.balance_sums(&tenant).await.unwrap(),
        sums_before
    );
    let entries_after = app
        .get(
            &format!("/v1/accounts/{}/entries?limit=100", ada.account),
            m,
        )
        .await;
    assert_eq!(entries_after.body, entries_before.body);
    let account = app.get(&format!("/v1/accounts/{}", ada.account), m).await;
    assert_eq!(account.body["status"], "closed");

    // The customer record remains, erased and empty.
    let c = app.get(&format!("/v1/customers/{}", ada.customer), m).await;
    assert_eq!(c.status, StatusCode::OK, "{c:?}");
    assert_eq!(c.body["external_ref"], Value::Null);
    let export = app
        .get(&format!("/v1/customers/{}/export", ada.customer), m)
        .await;
    assert_eq!(export.status, StatusCode::OK, "{export:?}");
    assert_eq!(export.body["customer"]["status"], "erased");
    assert_eq!(export.body["customer"]["profile"], Value::Null);
    assert!(!export.body.to_string().contains("Ada Lovelace"));
    assert!(
        !export
            .body
            .to_string()
            .contains(ada.email.as_deref().unwrap())
    );

    // The linked login is gone: its session ended, and it cannot sign in again.
    assert_eq!(
        app.get("/v1/me", &ada_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let login = app
        .login(Some(&t.slug), ada.email.as_deref().unwrap(), PASSWORD)
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{login:?}");
    let user = app
        .get(&format!("/v1/users/{}", ada.user_id.as_deref().unwrap()), m)
        .await;
    assert_eq!(user.body["status"], "disabled");
    assert!(
        !user
            .body
            .to_string()
            .contains(ada.email.as_deref().unwrap())
    );

    // Money can no longer reach or leave the erased customer's accounts.
    let dep = cash(app, m, "/v1/deposits", &ada.account, 10).await;
    assert_eq!(dep.code(), "account_closed", "{dep:?}");
    let tr = transfer(app, m, &bob.account, &ada.account, 10).await;
    assert_eq!(tr.code(), "account_closed", "{tr:?}");
    let reopen = app
        .post(
            "/v1/accounts",
            Some(m),
            json!({ "customer_id": ada.customer, "currency": "NGN" }),
        )
        .await;
    assert_eq!(reopen.code(), "customer_erased", "{reopen:?}");

    // A second erasure answers 409, and restriction of an erased customer too.
    let again = erase(m, "data_subject_request").await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    assert_eq!(again.code(), "customer_erased");
    let restrict = app
        .post(
            &format!("/v1/customers/{}/restrict", ada.customer),
            Some(m),
            json!({ "reason": "legal_claims" }),
        )
        .await;
    assert_eq!(restrict.code(), "customer_erased");
}

async fn restriction_blocks_new_money_movement_until_lifted(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "restrict").await;
    let m = &t.manager_token;
    let ada = subject(app, &t, true, "crm-ada").await;
    let bob = subject(app, &t, false, "crm-bob").await;
    let other = subject(app, &t, false, "crm-other").await;
    cash(app, m, "/v1/deposits", &ada.account, 1_000).await;
    cash(app, m, "/v1/deposits", &bob.account, 1_000).await;
    let earlier = transfer(app, m, &bob.account, &ada.account, 100).await;
    assert_eq!(earlier.status, StatusCode::CREATED);
    let hold = app
        .post(
            "/v1/holds",
            Some(m),
            json!({ "account_id": ada.account, "credit_account_id": bob.account, "amount": 30, "currency": "USD", "expires_in_seconds": 600 }),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");

    let restrict_path = format!("/v1/customers/{}/restrict", ada.customer);
    let unrestrict_path = format!("/v1/customers/{}/unrestrict", ada.customer);
    // A CUSTOMER cannot lift (or set) its own restriction; reasons are codes.
    let ada_token = app
        .token(Some(&t.slug), ada.email.as_deref().unwrap())
        .await;
    assert_eq!(
        app.post(
            &restrict_path,
            Some(&ada_token),
            json!({ "reason": "legal_claims" })
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let bad = app
        .post(
            &restrict_path,
            Some(m),
            json!({ "reason": "accuracy_verified" }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["param"], "reason");

    let (_, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let r = app
        .post(
            &restrict_path,
            Some(&officer),
            json!({ "reason": "accuracy_contested" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["processing_restricted"], true);
    assert!(
        audited(
            app,
            &t,
            "customer.restrict",
            Some(&ada.customer),
            "success",
            Some("accuracy_contested")
        )
        .await
    );

    let refused = |r: &Resp| {
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(r.code(), "processing_restricted", "{r:?}");
    };
    refused(&transfer(app, m, &ada.account, &bob.account, 10).await);
    refused(&transfer(app, m, &bob.account, &ada.account, 10).await);
    refused(&cash(app, m, "/v1/deposits", &ada.account, 10).await);
    refused(&cash(app, m, "/v1/withdrawals", &ada.account, 10).await);
    refused(
        &app.post(
            "/v1/holds",
            Some(m),
            json!({ "account_id": ada.account, "amount": 10, "currency": "USD", "expires_in_seconds": 600 }),
        )
        .await,
    );
    refused(
        &app.post(
            "/v1/holds",
            Some(m),
            json!({ "account_id": bob.account, "credit_account_id": ada.account, "amount": 10, "currency": "USD", "expires_in_seconds": 600 }),
        )
        .await,
    );
    refused(
        &app.post(
            &format!("/v1/holds/{}/capture", hold.body["id"].as_str().unwrap()),
            Some(m),
            json!({}),
        )
        .await,
    );
    // Nor inside a batch: the restricted transfer is refused, its neighbour posts.
    let batch = app
        .post(
            "/v1/transfers/batch",
            Some(m),
            json!({ "transfers": [
                { "amount": 5, "currency": "USD", "debit_account_id": ada.account, "credit_account_id": bob.account },
                { "amount": 5, "currency": "USD", "debit_account_id": bob.account, "credit_account_id": other.account },
            ] }),
        )
        .await;
    assert_eq!(batch.status, StatusCode::OK, "{batch:?}");
    assert_eq!(batch.body["results"][0]["status"], 422, "{batch:?}");
    assert_eq!(
        batch.body["results"][0]["error"]["error"]["code"], "processing_restricted",
        "{batch:?}"
    );
    assert_eq!(batch.body["results"][1]["status"], 201, "{batch:?}");
    // The customer itself cannot move its money either.
    refused(&transfer(app, &ada_token, &ada.account, &bob.account, 10).await);
    // Nothing moved.
    assert_eq!(balance(app, &t, &ada.account).await, 1_100);
    assert_eq!(balance(app, &t, &bob.account).await, 895);
    assert!(
        audited(
            app,
            &t,
            "transfer.create",
            None,
            "failure",
            Some("processing_restricted")
        )
        .await
    );
    assert!(
        audited(
            app,
            &t,
            "deposit.create",
            None,
            "failure",
            Some("processing_restricted")
        )
        .await
    );
    // A correction of an earlier movement stays possible.
    let reversal = app
        .post(
            &format!(
                "/v1/transfers/{}/reverse",
                earlier.body["id"].as_str().unwrap()
            ),
            Some(m),
            json!({}),
        )
        .await;
    assert_eq!(reversal.status, StatusCode::CREATED, "{reversal:?}");
    assert_eq!(balance(app, &t, &ada.account).await, 1_000);
    // Restricting again is harmless; the export shows the flag.
    let again = app
        .post(&restrict_path, Some(m), json!({ "reason": "legal_claims" }))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    let export = app
        .get(&format!("/v1/customers/{}/export", ada.customer), &officer)
        .await;
    assert_eq!(export.body["customer"]["processing_restricted"], true);

    let lifted = app
        .post(
            &unrestrict_path,
            Some(&officer),
            json!({ "reason": "accuracy_verified" }),
        )
        .await;
    assert_eq!(lifted.status, StatusCode::OK, "{lifted:?}");
    assert_eq!(lifted.body["processing_restricted"], false);
    assert!(
        audited(
            app,
            &t,
            "customer.unrestrict",
            Some(&ada.customer),
            "success",
            Some("accuracy_verified")
        )
        .await
    );
    let ok = transfer(app, m, &ada.account, &bob.account, 10).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");
    let ok = cash(app, m, "/v1/deposits", &ada.account, 10).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");
    assert_eq!(balance(app, &t, &ada.account).await, 1_000);
    // Unknown and foreign customers answer 404.
    let missing = app
        .post(
            "/v1/customers/cus_0000000000000000000000000000000a/restrict",
            Some(m),
            json!({ "reason": "legal_claims" }),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");
}

/// Polls every future concurrently on the current task.
async fn join_all<F: std::future::Future<Output = Resp>>(fs: Vec<F>) -> Vec<Resp> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futs: Vec<Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<Resp>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => done[i] = Some(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

/// Deposits racing an erasure: either the erasure sees money and is refused, or it commits first
/// and every later deposit finds the account closed. Never an erased customer with a balance.
async fn erasure_racing_deposits_never_leaves_money_behind(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "race").await;
    let m = &t.manager_token;
    let tenant = tenant_id(&t);
    for round in 0..4 {
        let ada = subject(app, &t, false, &format!("crm-{round}")).await;
        let erase_path = format!("/v1/customers/{}/erase", ada.customer);
        type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Resp> + Send + 'a>>;
        let mut reqs: Vec<Call<'_>> = Vec::new();
        for i in 0..8 {
            if i == round {
                reqs.push(Box::pin(app.post(
                    &erase_path,
                    Some(m),
                    json!({ "reason": "no_longer_necessary" }),
                )));
            } else {
                // Later rounds let the erasure start first, with deposits arriving during
                // and after its transaction.
                let delay = match round {
                    2 => 5 + 2 * i as u64,
                    3 => 15 + 3 * i as u64,
                    _ => 0,
                };
                let account = ada.account.clone();
                reqs.push(Box::pin(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    cash(app, m, "/v1/deposits", &account, 10).await
                }));
            }
        }
        let results = join_all(reqs).await;
        let erase = &results[round];
        let deposits: Vec<&Resp> = results
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != round)
            .map(|(_, r)| r)
            .collect();
        let posted = deposits
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count() as i64;
        for d in &deposits {
            assert!(
                d.status == StatusCode::CREATED || d.code() == "account_closed",
                "{d:?}"
            );
        }
        let account = app.get(&format!("/v1/accounts/{}", ada.account), m).await;
        assert_eq!(account.body["posted_balance"], posted * 10);
        if erase.status == StatusCode::OK {
            assert_eq!(posted, 0, "money reached an erased customer: {erase:?}");
            assert_eq!(account.body["status"], "closed");
        } else {
            assert_eq!(erase.code(), "erasure_blocked", "{erase:?}");
            assert!(posted > 0);
            assert_eq!(account.body["status"], "active");
        }
        for (_, sum) in app.core.store.balance_sums(&tenant).await.unwrap() {
            assert_eq!(sum, 0);
        }
    }
}

backend_tests!(
    export_holds_the_subjects_data_and_nothing_of_another,
    erasure_waits_for_a_zero_balance_then_shreds_the_subject,
    restriction_blocks_new_money_movement_until_lifted,
    erasure_racing_deposits_never_leaves_money_behind,
);
