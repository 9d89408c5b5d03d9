//! Issue 13, the ledger findings of the outside review: system accounts take only their declared
//! movement kinds (item 1), holds and captures are money movements under the step-up threshold
//! (item 2), a refused batch is one audit record and refusals spend a per-credential budget
//! (item 9), idempotency keys belong to the credential (item 12), and a batch expires only the
//! holds of the accounts it touches (item 14).

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{PASSWORD, Resp, TenantFixture, TestApp, customer_account, send_to};

async fn post_with(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.send(req.body(Body::from(body.to_string())).unwrap())
        .await
}

async fn deposit(app: &TestApp, token: &str, account: &str, amount: i64) -> Resp {
    app.post(
        "/v1/deposits",
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

async fn hold(
    app: &TestApp,
    token: &str,
    account: &str,
    credit: Option<&str>,
    amount: i64,
) -> Resp {
    app.post(
        "/v1/holds",
        Some(token),
        json!({ "account_id": account, "credit_account_id": credit, "amount": amount,
                "currency": "USD", "expires_in_seconds": 3600 }),
    )
    .await
}

/// An API token of the tenant's manager with `scopes`; its secret.
async fn api_token(app: &TestApp, t: &TenantFixture, scopes: &[&str]) -> String {
    let r = app
        .post(
            "/v1/api-tokens",
            Some(&t.manager_token),
            json!({ "name": "integration", "scopes": scopes, "expires_in": "30d" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.body["secret"].as_str().unwrap().to_owned()
}

async fn settlement_id(app: &TestApp, t: &TenantFixture) -> String {
    let list = app.get("/v1/accounts?limit=100", &t.manager_token).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "settlement" && a["currency"] == "USD")
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .expect("the manager sees the settlement account")
}

async fn balance(app: &TestApp, t: &TenantFixture, account: &str) -> i64 {
    let a = app
        .get(&format!("/v1/accounts/{account}"), &t.manager_token)
        .await;
    a.body["posted_balance"].as_i64().unwrap()
}

// ---------------------------------------------------------------- item 1

async fn system_accounts_take_only_deposits_and_withdrawals_whatever_the_credential(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let settlement = settlement_id(app, &t).await;
    let customer = customer_account(app, &t, "USD").await;

    // A token scoped to transfers:create (no cash:write) names settlement as the debit: refused.
    let transfers_only = api_token(app, &t, &["transfers:create", "transfers:read"]).await;
    let r = transfer(app, &transfers_only, &settlement, &customer, 1_000_000).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.code(), "system_account");
    // Nor may the manager itself move money out of (or into) settlement by a plain transfer.
    let r = transfer(app, &t.manager_token, &settlement, &customer, 5).await;
    assert_eq!(r.code(), "system_account", "{r:?}");
    // A hold on it (to capture later) is refused too, and so is a hold destined for it.
    let holds = api_token(app, &t, &["holds:write", "accounts:read"]).await;
    let r = hold(
        app,
        &holds,
        &settlement,
        Some(&customer),
        1_000_000_000_000_000,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.code(), "system_account");
    assert_eq!(
        deposit(app, &t.manager_token, &customer, 100).await.status,
        StatusCode::CREATED
    );
    let r = hold(app, &t.manager_token, &customer, Some(&settlement), 50).await;
    assert_eq!(r.code(), "system_account", "{r:?}");
    // A multi-leg transfer crediting settlement, and a batch naming it, likewise.
    let r = app
        .post(
            "/v1/transfers",
            Some(&t.manager_token),
            json!({ "amount": 10, "currency": "USD", "debit_account_id": customer,
                    "credits": [{ "account_id": settlement, "amount": 5 },
                                { "account_id": customer_account(app, &t, "USD").await, "amount": 5 }] }),
        )
        .await;
    assert_eq!(r.code(), "system_account", "{r:?}");
    let r = app
        .post(
            "/v1/transfers/batch",
            Some(&t.manager_token),
            json!({ "transfers": [{ "amount": 7, "currency": "USD", "debit_account_id": settlement,
                                    "credit_account_id": customer }] }),
        )
        .await;
    assert_eq!(
        r.body["results"][0]["error"]["error"]["code"], "system_account",
        "{r:?}"
    );
    // Nothing moved: the customer holds exactly its deposit.
    assert_eq!(balance(app, &t, &customer).await, 100);

    // The declared ways still work: a deposit, a withdrawal, and the reversal of a deposit.
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let d = deposit(app, &cashier, &customer, 40).await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:?}");
    let w = app
        .post(
            "/v1/withdrawals",
            Some(&cashier),
            json!({ "account_id": customer, "amount": 30, "currency": "USD" }),
        )
        .await;
    assert_eq!(w.status, StatusCode::CREATED, "{w:?}");
    let rev = app
        .post(
            &format!("/v1/transfers/{}/reverse", d.body["id"].as_str().unwrap()),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(rev.status, StatusCode::CREATED, "{rev:?}");
    assert_eq!(balance(app, &t, &customer).await, 70);

    // Only accounts:read_system (MANAGER, AUDITOR) sees system ids. A cashier's deposit answer
    // shows the settlement leg by kind only, and listing or reading it is as for a missing one.
    assert_eq!(d.body["debit_account_id"], Value::Null, "{d:?}");
    assert_eq!(d.body["debits"][0]["system"], "settlement");
    assert!(d.body["debits"][0].get("account_id").is_none(), "{d:?}");
    assert!(!d.body.to_string().contains(&settlement));
    let list = app.get("/v1/accounts?limit=100", &cashier).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] == "customer"),
        "{list:?}"
    );
    let r = app
        .get(&format!("/v1/accounts/{settlement}"), &cashier)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    let r = app
        .get(&format!("/v1/accounts/{settlement}/entries"), &cashier)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    let seen = app
        .get(
            &format!("/v1/transfers/{}", d.body["id"].as_str().unwrap()),
            &cashier,
        )
        .await;
    assert!(!seen.body.to_string().contains(&settlement), "{seen:?}");
    let listed = app.get("/v1/transfers?limit=100", &cashier).await;
    assert!(!listed.body.to_string().contains(&settlement));
    // The auditor sees it by id.
    let (_, auditor) = app.user_token(&t, &["AUDITOR"]).await;
    let seen = app
        .get(
            &format!("/v1/transfers/{}", d.body["id"].as_str().unwrap()),
            &auditor,
        )
        .await;
    assert_eq!(
        seen.body["debit_account_id"],
        settlement.as_str(),
        "{seen:?}"
    );
    assert_eq!(seen.body["debits"][0]["system"], "settlement");
}

// ---------------------------------------------------------------- item 2

async fn holds_and_captures_are_under_the_step_up_threshold(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    app.set_policy(&t, |p| {
        p.step_up_transfer_threshold.insert("USD".into(), 1_000);
    })
    .await;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    let c = customer_account(app, &t, "USD").await;
    assert_eq!(
        deposit(app, &t.manager_token, &a, 100_000).await.status,
        StatusCode::CREATED
    );
    // A hold above the threshold while freshly signed in, destined for b.
    let big = hold(app, &t.manager_token, &a, Some(&b), 5_000).await;
    assert_eq!(big.status, StatusCode::CREATED, "{big:?}");
    let small = hold(app, &t.manager_token, &a, Some(&b), 500).await;
    assert_eq!(small.status, StatusCode::CREATED, "{small:?}");
    let token = api_token(
        app,
        &t,
        &["holds:write", "transfers:create", "accounts:read"],
    )
    .await;

    // Eleven minutes on, the session is no longer fresh.
    app.clock.advance_seconds(660);
    let r = hold(app, &t.manager_token, &a, Some(&b), 5_000).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "step_up_required");
    // Capturing the big hold moves 5,000 now: step-up too.
    let big_id = big.body["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/holds/{big_id}/capture"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.code(), "step_up_required");
    // Below the threshold no step-up is needed, but a hold naming b is captured to b only.
    let small_id = small.body["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/holds/{small_id}/capture"),
            Some(&t.manager_token),
            json!({ "credit_account_id": c }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(balance(app, &t, &c).await, 0);
    let r = app
        .post(
            &format!("/v1/holds/{small_id}/capture"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(balance(app, &t, &b).await, 500);

    // An API token can never step up: no route moves more than the threshold with one, and the
    // error says why.
    for r in [
        hold(app, &token, &a, Some(&b), 5_000).await,
        transfer(app, &token, &a, &b, 5_000).await,
    ] {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
        assert_eq!(r.code(), "step_up_required");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("API tokens cannot step up"),
            "{r:?}"
        );
    }
    // After stepping up, the manager captures the big hold.
    let s = app
        .post(
            "/v1/auth/step-up",
            Some(&t.manager_token),
            json!({ "password": PASSWORD }),
        )
        .await;
    assert_eq!(s.status, StatusCode::OK, "{s:?}");
    let r = app
        .post(
            &format!("/v1/holds/{big_id}/capture"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(balance(app, &t, &b).await, 5_500);
}

// ---------------------------------------------------------------- item 9

async fn a_refused_batch_is_one_audit_record_and_refusals_spend_a_budget(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    // The test suite's limits are generous; this instance runs with the default budget.
    let (_, router) = app.instance_with(&[("refusal_budget", "1000/600")]).await;
    let send = |path: &str, token: &str, body: Value| {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        send_to(&router, req)
    };
    let transfer = |token: &str| {
        send(
            "/v1/transfers",
            token,
            json!({ "amount": 1, "currency": "USD", "debit_account_id": a, "credit_account_id": b }),
        )
    };
    let before = app.audit_chain(&t.id).await.len();
    // A thousand transfers from an empty account: every one is refused.
    let items: Vec<Value> = (0..1000)
        .map(|_| json!({ "amount": 1, "currency": "USD", "debit_account_id": a, "credit_account_id": b }))
        .collect();
    let r = send(
        "/v1/transfers/batch",
        &cashier,
        json!({ "transfers": items }),
    )
    .await;
    assert!(r.status.is_success(), "{r:?}");
    assert!(
        r.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["error"]["error"]["code"] == "insufficient_funds"),
        "{r:?}"
    );
    let chain = app.audit_chain(&t.id).await;
    let added = chain.len() - before;
    assert!(
        added <= 10,
        "a refused batch of 1,000 wrote {added} audit rows"
    );
    let batch = chain
        .iter()
        .find(|e| e.action == "transfer.batch")
        .expect("the batch's refusals are audited");
    assert_eq!(batch.reason.as_deref(), Some("insufficient_funds=1000"));
    // The budget (1,000 refused movements per 10 minutes by default) is spent: the rest of the
    // window answers 429 with Retry-After, and a security event says so.
    let r = transfer(&cashier).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "refusal_budget_exhausted");
    assert!(r.headers.get("retry-after").is_some());
    let r = send(
        "/v1/holds",
        &cashier,
        json!({ "account_id": a, "amount": 1, "currency": "USD", "expires_in_seconds": 3600 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert!(
        app.audit_chain(&t.id)
            .await
            .iter()
            .any(|e| e.security_event.as_deref() == Some("refusal_budget_exhausted"))
    );
    // Another credential of the tenant is not affected.
    let r = transfer(&t.manager_token).await;
    assert_eq!(r.code(), "insufficient_funds", "{r:?}");
    // A new window, a new budget.
    app.clock.advance_seconds(601);
    let r = transfer(&cashier).await;
    assert_eq!(r.code(), "insufficient_funds", "{r:?}");
}

// ---------------------------------------------------------------- item 12

async fn idempotency_keys_belong_to_the_credential(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    assert_eq!(
        deposit(app, &t.manager_token, &a, 1_000).await.status,
        StatusCode::CREATED
    );
    let body =
        json!({ "amount": 10, "currency": "USD", "debit_account_id": a, "credit_account_id": b });
    let first_token = api_token(app, &t, &["transfers:create", "transfers:read"]).await;
    let second_token = api_token(app, &t, &["transfers:create"]).await;
    let key = [("idempotency-key", "order-1")];
    let first = post_with(app, "/v1/transfers", &first_token, body.clone(), &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    // Another integration of the same user with the same key gets its own transfer, never
    // the first one's stored answer (with balances it may not read).
    let second = post_with(app, "/v1/transfers", &second_token, body.clone(), &key).await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert!(second.headers.get("idempotency-replayed").is_none());
    assert_ne!(second.body["id"], first.body["id"]);
    // The first token's retry still replays.
    let again = post_with(app, "/v1/transfers", &first_token, body.clone(), &key).await;
    assert_eq!(again.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(again.body["id"], first.body["id"]);
    // Sessions share the user's keys: signing in again and retrying replays.
    let one = post_with(app, "/v1/transfers", &t.manager_token, body.clone(), &key).await;
    assert_eq!(one.status, StatusCode::CREATED, "{one:?}");
    assert_ne!(one.body["id"], first.body["id"]);
    let fresh = app
        .token(Some(&t.slug), &format!("manager@{}.test", t.slug))
        .await;
    let retry = post_with(app, "/v1/transfers", &fresh, body, &key).await;
    assert_eq!(retry.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(retry.body["id"], one.body["id"]);
    assert_eq!(balance(app, &t, &b).await, 30);

    // A replay is rendered for the replaying credential: a user who could see settlement when
    // depositing, and no longer can, does not get its id back from the stored answer.
    let (desk, email) = app.user(&t, &["CASHIER", "AUDITOR"]).await;
    let token = app.token(Some(&t.slug), &email).await;
    let cash = json!({ "account_id": a, "amount": 5, "currency": "USD" });
    let key = [("idempotency-key", "cash-1")];
    let d = post_with(app, "/v1/deposits", &token, cash.clone(), &key).await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:?}");
    let settlement = settlement_id(app, &t).await;
    assert_eq!(d.body["debit_account_id"], settlement.as_str());
    let r = app
        .request(
            Method::PUT,
            &format!("/v1/users/{desk}/roles"),
            Some(&t.manager_token),
            Some(json!({ "roles": ["CASHIER"] })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let token = app.token(Some(&t.slug), &email).await;
    let replay = post_with(app, "/v1/deposits", &token, cash, &key).await;
    assert_eq!(replay.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(replay.body["id"], d.body["id"]);
    assert!(!replay.body.to_string().contains(&settlement), "{replay:?}");
}

// ---------------------------------------------------------------- item 14

async fn a_batch_expires_only_the_holds_of_the_accounts_it_touches(app: &TestApp) {
    let admin = app.platform_admin().await;
    let one = app.tenant(&admin, "one").await;
    let two = app.tenant(&admin, "two").await;
    let held = customer_account(app, &one, "USD").await;
    assert_eq!(
        deposit(app, &one.manager_token, &held, 100).await.status,
        StatusCode::CREATED
    );
    let h = app
        .post(
            "/v1/holds",
            Some(&one.manager_token),
            json!({ "account_id": held, "amount": 60, "currency": "USD", "expires_in_seconds": 60 }),
        )
        .await;
    assert_eq!(h.status, StatusCode::CREATED, "{h:?}");
    let hold_id = h.body["id"].as_str().unwrap().to_owned();
    app.clock.advance_seconds(120);
    // Another tenant's transfers do not load (or write) the first tenant's expired hold.
    let x = customer_account(app, &two, "USD").await;
    let y = customer_account(app, &two, "USD").await;
    assert_eq!(
        deposit(app, &two.manager_token, &x, 50).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        transfer(app, &two.manager_token, &x, &y, 20).await.status,
        StatusCode::CREATED
    );
    let status = app
        .raw_strings(&format!("SELECT status FROM holds WHERE id = '{hold_id}'"))
        .await;
    assert_eq!(
        status,
        ["active"],
        "another tenant's batch touched this hold"
    );
    // Reads already treat it as expired, and the held account's next movement releases it.
    let r = app
        .get(&format!("/v1/holds/{hold_id}"), &one.manager_token)
        .await;
    assert_eq!(r.body["status"], "expired", "{r:?}");
    let other = customer_account(app, &one, "USD").await;
    let r = transfer(app, &one.manager_token, &held, &other, 100).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let status = app
        .raw_strings(&format!("SELECT status FROM holds WHERE id = '{hold_id}'"))
        .await;
    assert_eq!(status, ["expired"]);
}

backend_tests!(
    system_accounts_take_only_deposits_and_withdrawals_whatever_the_credential,
    holds_and_captures_are_under_the_step_up_threshold,
    a_refused_batch_is_one_audit_record_and_refusals_spend_a_budget,
    idempotency_keys_belong_to_the_credential,
    a_batch_expires_only_the_holds_of_the_accounts_it_touches,
);
