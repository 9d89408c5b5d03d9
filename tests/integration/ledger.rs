//! The ledger: accounts, double-entry transfers, deposits and withdrawals, idempotency, and its
//! invariants under concurrency.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Resp, TenantFixture, TestApp, customer_account};

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

async fn balance(app: &TestApp, token: &str, account: &str) -> i64 {
    let r = app.get(&format!("/v1/accounts/{account}"), token).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.body["posted_balance"].as_i64().unwrap()
}

/// The double-entry invariant: every currency's balances sum to zero.
async fn assert_balanced(app: &TestApp, t: &TenantFixture) {
    let sums = app
        .core
        .store
        .balance_sums(&kasho::ids::TenantId::parse(&t.id).unwrap())
        .await
        .unwrap();
    assert!(!sums.is_empty());
    for (currency, sum) in sums {
        assert_eq!(sum, 0, "{currency} does not balance");
    }
}

async fn tenants_get_system_accounts_and_customers_get_one_account_per_currency(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let all = app.get("/v1/accounts?limit=100", &t.manager_token).await;
    let kinds: Vec<(String, String)> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().to_owned(),
                a["currency"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for kind in ["settlement", "fees", "suspense"] {
        for cur in ["USD", "NGN"] {
            assert!(
                kinds.contains(&(kind.to_owned(), cur.to_owned())),
                "{kind} {cur} missing: {kinds:?}"
            );
        }
    }
    let c = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "external_ref": "crm-42" }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED);
    assert!(c.body["id"].as_str().unwrap().starts_with("cus_"));
    let open = |currency: &str| {
        app.post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": c.body["id"], "currency": currency }),
        )
    };
    let a = open("USD").await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(a.body["posted_balance"], 0);
    assert_eq!(a.body["available_balance"], 0);
    assert_eq!(a.body["status"], "active");
    assert_eq!(open("USD").await.code(), "account_exists");
    let eur = open("EUR").await;
    assert_eq!(eur.status, StatusCode::BAD_REQUEST);
    assert_eq!(eur.body["error"]["param"], "currency");
    let missing = app
        .post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": "cus_0000000000000000000000000000000a", "currency": "USD" }),
        )
        .await;
    assert_eq!(missing.body["error"]["param"], "customer_id");
}

async fn transfers_move_money_double_entry_with_running_balances(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    let d = deposit(app, &cashier, &a, 10_000).await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:?}");
    assert_eq!(d.body["kind"], "deposit");
    let r = transfer(app, &cashier, &a, &b, 2_500).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["object"], "transfer");
    assert!(r.body["id"].as_str().unwrap().starts_with("trf_"));
    let balances: HashMap<String, i64> = r.body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["account_id"].as_str().unwrap().to_owned(),
                b["balance_after"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(balances[&a], 7_500);
    assert_eq!(balances[&b], 2_500);
    assert_eq!(balance(app, &cashier, &a).await, 7_500);

    let entries = app
        .get(&format!("/v1/accounts/{a}/entries"), &cashier)
        .await;
    let list = entries.body["data"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["direction"], "debit");
    assert_eq!(
        list[0]["balance_after"], 7_500,
        "newest first with the running balance"
    );
    assert_eq!(list[1]["balance_after"], 10_000);

    let w = app
        .post(
            "/v1/withdrawals",
            Some(&cashier),
            json!({ "account_id": b, "amount": 500, "currency": "USD" }),
        )
        .await;
    assert_eq!(w.status, StatusCode::CREATED, "{w:?}");
    assert_eq!(balance(app, &cashier, &b).await, 2_000);

    let got = app
        .get(
            &format!("/v1/transfers/{}", r.body["id"].as_str().unwrap()),
            &cashier,
        )
        .await;
    assert_eq!(got.body["amount"], 2_500);
    let listed = app
        .get(&format!("/v1/transfers?account_id={b}"), &cashier)
        .await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 2);
    assert_balanced(app, &t).await;
    let chain = app.audit_chain(&t.id).await;
    assert!(
        chain
            .iter()
            .any(|e| e.action == "transfer.create"
                && e.target_id.as_deref() == r.body["id"].as_str())
    );
    assert!(chain.iter().any(|e| e.action == "deposit.create"));
}

async fn the_ledger_refuses_what_breaks_its_rules_and_changes_nothing(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    let n = customer_account(app, &t, "NGN").await;
    deposit(app, m, &a, 1_000).await;

    let r = transfer(app, m, &a, &b, 1_001).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds")
    );
    let r = transfer(app, m, &a, &n, 10).await;
    assert_eq!(r.code(), "currency_mismatch");
    let r = transfer(app, m, &a, &b, 0).await;
    assert_eq!(r.body["error"]["param"], "amount");
    let r = transfer(app, m, &a, &a, 10).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = transfer(app, m, &a, "acc_0000000000000000000000000000000a", 10).await;
    assert_eq!(r.code(), "account_not_found");

    // Multi-leg: all or nothing.
    let legs = json!({ "amount": 600, "currency": "USD", "debit_account_id": a,
                       "credits": [{ "account_id": b, "amount": 300 }, { "account_id": n, "amount": 300 }] });
    let r = app.post("/v1/transfers", Some(m), legs).await;
    assert_eq!(r.code(), "currency_mismatch");
    let r = app
        .post("/v1/transfers", Some(m), json!({ "amount": 600, "currency": "USD", "debit_account_id": a, "credits": [{ "account_id": b, "amount": 500 }] }))
        .await;
    assert_eq!(
        r.body["error"]["param"], "credits",
        "legs must sum to the amount"
    );
    assert_eq!(balance(app, m, &a).await, 1_000, "nothing moved");
    assert_eq!(balance(app, m, &b).await, 0);

    // Frozen: refuses debits, accepts credits; a reason is required.
    let no_reason = app
        .post(&format!("/v1/accounts/{a}/freeze"), Some(m), json!({}))
        .await;
    assert_eq!(no_reason.body["error"]["param"], "reason");
    let f = app
        .post(
            &format!("/v1/accounts/{a}/freeze"),
            Some(m),
            json!({ "reason": "suspicious_activity" }),
        )
        .await;
    assert_eq!(f.body["status"], "frozen");
    assert_eq!(transfer(app, m, &a, &b, 10).await.code(), "account_frozen");
    assert_eq!(deposit(app, m, &a, 5).await.status, StatusCode::CREATED);
    app.post(
        &format!("/v1/accounts/{a}/unfreeze"),
        Some(m),
        json!({ "reason": "review_completed" }),
    )
    .await;
    assert_eq!(
        transfer(app, m, &a, &b, 10).await.status,
        StatusCode::CREATED
    );

    // Overdraft: only as far as the limit a manager set.
    let o = app
        .request(
            Method::PUT,
            &format!("/v1/accounts/{b}/overdraft"),
            Some(m),
            Some(json!({ "overdraft_limit": 100 })),
        )
        .await;
    assert_eq!(o.status, StatusCode::OK, "{o:?}");
    assert_eq!(
        transfer(app, m, &b, &a, 110).await.status,
        StatusCode::CREATED
    );
    assert_eq!(balance(app, m, &b).await, -100);
    assert_eq!(
        transfer(app, m, &b, &a, 1).await.code(),
        "insufficient_funds"
    );

    // Close: only at zero.
    let c = app
        .post(&format!("/v1/accounts/{a}/close"), Some(m), json!({}))
        .await;
    assert_eq!(c.code(), "account_not_empty");
    let empty = customer_account(app, &t, "USD").await;
    let c = app
        .post(&format!("/v1/accounts/{empty}/close"), Some(m), json!({}))
        .await;
    assert_eq!(c.body["status"], "closed");
    assert_eq!(deposit(app, m, &empty, 1).await.code(), "account_closed");

    // References are unique per tenant.
    let with_ref = |r: &str| {
        app.post("/v1/transfers", Some(m), json!({ "amount": 1, "currency": "USD", "debit_account_id": a, "credit_account_id": b, "reference": r }))
    };
    assert_eq!(with_ref("inv-1").await.status, StatusCode::CREATED);
    assert_eq!(with_ref("inv-1").await.code(), "reference_taken");
    assert_balanced(app, &t).await;
}

async fn idempotency_keys_make_retries_safe(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    deposit(app, m, &a, 1_000).await;
    let send = |key: &str, amount: i64| {
        let body = json!({ "amount": amount, "currency": "USD", "debit_account_id": a, "credit_account_id": b });
        Request::post("/v1/transfers")
            .header("authorization", format!("Bearer {m}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = app.send(send("order-1", 100)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotency-replayed").is_none());
    let again = app.send(send("order-1", 100)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(again.body, first.body, "the stored response, byte for byte");
    assert_eq!(balance(app, m, &a).await, 900, "posted once");

    let other = app.send(send("order-1", 200)).await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );

    // A refusal is stored too: the retry gets the same answer even if funds arrive meanwhile.
    let poor = app.send(send("order-2", 5_000)).await;
    assert_eq!(poor.code(), "insufficient_funds");
    deposit(app, m, &a, 10_000).await;
    let retry = app.send(send("order-2", 5_000)).await;
    assert_eq!(retry.code(), "insufficient_funds");
    assert_eq!(retry.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(
        retry.body["error"]["message"],
        poor.body["error"]["message"]
    );

    // The key keeps the outcome's facts, not a rendered body; a replay long after still shows
    // the balances right after the movement, as the first answer did.
    let late = app.send(send("order-1", 100)).await;
    assert_eq!(
        late.body, first.body,
        "the first answer, after later movements"
    );
    let stored = app
        .raw_strings("SELECT response_body FROM idempotency_keys WHERE idem_key = 'order-1'")
        .await;
    assert_eq!(
        stored,
        vec![format!(
            r#"o1:{{"transfer":"{}"}}"#,
            first.body["id"].as_str().unwrap()
        )]
    );

    // Keys written by an older version hold a rendered body: a success is read back, anything
    // else is answered as it was stored.
    app.raw_sql(&format!(
        r#"UPDATE idempotency_keys SET response_status = 201, response_body = '{{"id":"{}"}}' WHERE idem_key = 'order-1'"#,
        first.body["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(app.send(send("order-1", 100)).await.body, first.body);
    app.raw_sql(
        r#"UPDATE idempotency_keys SET response_status = 422, response_body = '{"error":{"code":"old_refusal"}}' WHERE idem_key = 'order-2'"#,
    )
    .await;
    let old = app.send(send("order-2", 5_000)).await;
    assert_eq!(
        (old.status, old.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "old_refusal")
    );

    // Concurrent retries of one key post once.
    let reqs: Vec<_> = (0..8).map(|_| app.send(send("order-3", 10))).collect();
    let results = join_all(reqs).await;
    let created = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let in_flight = results
        .iter()
        .filter(|r| r.code() == "idempotency_key_in_flight")
        .count();
    assert_eq!(
        created + in_flight,
        8,
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let ids: std::collections::HashSet<&str> = results
        .iter()
        .filter_map(|r| r.body["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "every success is the same transfer");
    assert_eq!(balance(app, m, &a).await, 900 + 10_000 - 10);

    let bad = Request::post("/v1/transfers")
        .header("authorization", format!("Bearer {m}"))
        .header("content-type", "application/json")
        .header("idempotency-key", "x".repeat(256))
        .body(Body::from(json!({ "amount": 1, "currency": "USD", "debit_account_id": a, "credit_account_id": b }).to_string()))
        .unwrap();
    assert_eq!(
        app.send(bad).await.body["error"]["param"],
        "Idempotency-Key"
    );

    // Keys expire after their lifetime (24 h by default) and are then purged.
    app.clock.advance_seconds(86_400 + 1);
    assert!(
        app.core
            .store
            .purge_idempotency(app.clock_now())
            .await
            .unwrap()
            >= 3
    );
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
    done.into_iter().map(|r| r.unwrap()).collect()
}

async fn customers_move_only_their_own_money_and_see_only_their_own_balances(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let (uid, token) = app.user_token(&t, &["CUSTOMER"]).await;
    let c = app
        .post("/v1/customers", Some(m), json!({ "user_id": uid }))
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let mine = app
        .post(
            "/v1/accounts",
            Some(m),
            json!({ "customer_id": c.body["id"], "currency": "USD" }),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = customer_account(app, &t, "USD").await;
    deposit(app, m, &mine, 1_000).await;
    deposit(app, m, &theirs, 1_000).await;

    let r = transfer(app, &token, &mine, &theirs, 100).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let shown: Vec<&str> = r.body["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        shown,
        vec![mine.as_str()],
        "the recipient's balance is not shown to a customer"
    );
    let steal = transfer(app, &token, &theirs, &mine, 100).await;
    assert_eq!(steal.code(), "account_not_found");
    assert_eq!(
        app.get(&format!("/v1/accounts/{theirs}"), &token)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let listed = app.get("/v1/accounts", &token).await;
    let ids: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    let txs = app.get("/v1/transfers", &token).await;
    assert_eq!(
        txs.body["data"].as_array().unwrap().len(),
        2,
        "own deposit and own transfer"
    );
    assert_eq!(
        app.post(
            "/v1/deposits",
            Some(&token),
            json!({ "account_id": mine, "amount": 1, "currency": "USD" })
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
}

async fn ledger_rows_cannot_be_changed_even_with_sql(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let a = customer_account(app, &t, "USD").await;
    deposit(app, &t.manager_token, &a, 100).await;
    for sql in [
        "UPDATE entries SET amount = 1",
        "DELETE FROM entries",
        "UPDATE transfers SET amount = 1",
        "DELETE FROM transfers",
    ] {
        assert!(
            app.try_raw_sql(sql).await.is_err(),
            "{sql} must be refused by storage"
        );
    }
}

/// `n` USD customer accounts, each funded with a deposit of `amount`.
pub(crate) async fn funded_accounts(
    app: &TestApp,
    t: &TenantFixture,
    n: usize,
    amount: i64,
) -> Vec<String> {
    let mut accounts = Vec::with_capacity(n);
    for _ in 0..n {
        let a = customer_account(app, t, "USD").await;
        deposit(app, &t.manager_token, &a, amount).await;
        accounts.push(a);
    }
    accounts
}

/// A keyed transfer sent straight to `router` (from a spawned task): status, whether it was a
/// replay, and the body.
async fn keyed_transfer(
    router: axum::Router,
    token: String,
    key: String,
    (from, to, amount): (String, String, i64),
) -> (StatusCode, bool, Value) {
    use tower::ServiceExt;
    let body = json!({ "amount": amount, "currency": "USD", "debit_account_id": from, "credit_account_id": to });
    let req = Request::post("/v1/transfers")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let replayed = resp.headers().contains_key("idempotency-replayed");
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, replayed, serde_json::from_slice(&bytes).unwrap())
}

/// No account below zero, each balance equal to its last entry's running balance, and the
/// tenant's balances summing to zero.
pub(crate) async fn assert_accounts_consistent(
    app: &TestApp,
    t: &TenantFixture,
    accounts: &[String],
) {
    let m = &t.manager_token;
    for a in accounts {
        let acc = app.get(&format!("/v1/accounts/{a}"), m).await.body;
        assert!(acc["posted_balance"].as_i64().unwrap() >= 0, "{acc}");
        let last = app
            .get(&format!("/v1/accounts/{a}/entries?limit=1"), m)
            .await
            .body;
        assert_eq!(last["data"][0]["balance_after"], acc["posted_balance"]);
    }
    assert_balanced(app, t).await;
}

async fn concurrent_clients_on_hot_accounts_keep_every_invariant(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let accounts = funded_accounts(app, &t, 4, 1_000).await;
    let clients = 50;
    let per_client = 8;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let router = app.router.clone();
        let accounts = accounts.clone();
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let mut created = Vec::new();
            for i in 0..per_client {
                let from = &accounts[(c + i) % accounts.len()];
                let to = &accounts[(c + i + 1) % accounts.len()];
                let amount = 1 + ((c * 7 + i * 13) % 300) as i64;
                let (status, _, v) = keyed_transfer(
                    router.clone(),
                    m.clone(),
                    format!("c{c}-{i}"),
                    (from.clone(), to.clone(), amount),
                )
                .await;
                match status {
                    StatusCode::CREATED => created.push(v["id"].as_str().unwrap().to_owned()),
                    StatusCode::UNPROCESSABLE_ENTITY => {
                        assert_eq!(v["error"]["code"], "insufficient_funds")
                    }
                    other => panic!("unexpected {other}: {v}"),
                }
            }
            created
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        created.extend(task.await.unwrap());
    }
    assert!(!created.is_empty());
    // Every acknowledged transfer exists exactly once.
    let unique: std::collections::HashSet<_> = created.iter().collect();
    assert_eq!(unique.len(), created.len());
    for id in &created {
        assert_eq!(
            app.get(&format!("/v1/transfers/{id}"), &m).await.status,
            StatusCode::OK
        );
    }
    // No account below its floor; balances equal the last entry's running balance.
    assert_accounts_consistent(app, &t, &accounts).await;
}

/// Two instances (each with its own ledger writer) on one database: they lock the accounts they
/// share, so balances, the audit chain and idempotency hold across them.
async fn two_instances_writing_the_same_accounts_keep_every_invariant(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let accounts = funded_accounts(app, &t, 4, 1_000).await;
    let instances = [app.router.clone(), app.second_instance().await];
    let token = m.clone();
    let send = move |router: axum::Router, key: String, from: String, to: String, amount: i64| {
        keyed_transfer(router, token.clone(), key, (from, to, amount))
    };
    let mut tasks = Vec::new();
    for c in 0..40usize {
        let send = send.clone();
        let (accounts, instances) = (accounts.clone(), instances.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..6usize {
                let from = accounts[(c + i) % accounts.len()].clone();
                let to = accounts[(c + i + 1) % accounts.len()].clone();
                let amount = 1 + ((c * 7 + i * 13) % 300) as i64;
                let key = format!("c{c}-{i}");
                if i == 0 {
                    // The same request sent to both instances at once: posted once.
                    let (a, b) = tokio::join!(
                        send(
                            instances[0].clone(),
                            key.clone(),
                            from.clone(),
                            to.clone(),
                            amount
                        ),
                        send(instances[1].clone(), key, from, to, amount)
                    );
                    out.push((true, a));
                    out.push((true, b));
                } else {
                    out.push((
                        false,
                        send(instances[(c + i) % 2].clone(), key, from, to, amount).await,
                    ));
                }
            }
            out
        }));
    }
    let mut posted = std::collections::HashMap::new();
    for task in tasks {
        for (twin, (status, replayed, v)) in task.await.unwrap() {
            match status {
                StatusCode::CREATED => {
                    let id = v["id"].as_str().unwrap().to_owned();
                    let seen = posted.entry(id).or_insert(0);
                    *seen += 1;
                    assert!(
                        twin || !replayed,
                        "only a twin request can be a replay: {v}"
                    );
                }
                // A refusal is stored with its key too: a refused twin replays it.
                StatusCode::UNPROCESSABLE_ENTITY => {
                    assert_eq!(v["error"]["code"], "insufficient_funds", "{v}")
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
    }
    assert!(
        posted.len() > 40,
        "most transfers went through: {}",
        posted.len()
    );
    assert!(
        posted.values().all(|n| *n <= 2),
        "a transfer is answered at most twice (its twin replays)"
    );
    // Every acknowledged transfer exists, once, and nothing else was posted.
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let filter = kasho::store::TransferFilter::default();
    let (mut listed, mut after) = (0, None);
    loop {
        let page = kasho::store::Page {
            limit: 100,
            starting_after: after.take(),
        };
        let rows = app
            .core
            .store
            .list_transfers(&tenant, &filter, &page)
            .await
            .unwrap();
        for r in rows.iter().take(100).filter(|r| r.kind == "transfer") {
            listed += 1;
            assert!(
                posted.contains_key(&r.id),
                "posted but never acknowledged: {}",
                r.id
            );
        }
        if rows.len() <= 100 {
            break;
        }
        after = rows.get(99).map(|r| r.id.clone());
    }
    assert_eq!(
        listed,
        posted.len(),
        "every acknowledged transfer exists exactly once"
    );
    assert_accounts_consistent(app, &t, &accounts).await;
    // Both writers appended to the tenant's audit chain without forking it.
    kasho::service::audit::verify_all(&*app.core.store, &app.core.sealer, |_| {}, |_| {})
        .await
        .expect("the audit chain verifies");
}

async fn reversals_undo_transfers_but_never_more_than_the_original(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    deposit(app, m, &a, 1_000).await;
    let tr = transfer(app, m, &a, &b, 600).await;
    let id = tr.body["id"].as_str().unwrap().to_owned();
    let part = app
        .post(
            &format!("/v1/transfers/{id}/reverse"),
            Some(m),
            json!({ "amount": 200 }),
        )
        .await;
    assert_eq!(part.status, StatusCode::CREATED, "{part:?}");
    assert_eq!(part.body["kind"], "reversal");
    assert_eq!(part.body["debit_account_id"], b.as_str());
    assert_eq!(balance(app, m, &a).await, 600);
    let too_much = app
        .post(
            &format!("/v1/transfers/{id}/reverse"),
            Some(m),
            json!({ "amount": 401 }),
        )
        .await;
    assert_eq!(too_much.code(), "reversal_exceeds_original");
    let reverse_rest = || {
        Request::post(format!("/v1/transfers/{id}/reverse"))
            .header("authorization", format!("Bearer {m}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "undo-rest")
            .body(Body::from("{}"))
            .unwrap()
    };
    let rest = app.send(reverse_rest()).await;
    let retried = app.send(reverse_rest()).await;
    assert_eq!(
        retried.status,
        StatusCode::CREATED,
        "a retried reversal replays: {retried:?}"
    );
    assert_eq!(retried.body, rest.body);
    assert_eq!(rest.body["reverses_id"], id.as_str());
    assert_eq!(rest.status, StatusCode::CREATED, "{rest:?}");
    assert_eq!(rest.body["amount"], 400, "defaults to what is left");
    assert_eq!(balance(app, m, &a).await, 1_000);
    assert_eq!(balance(app, m, &b).await, 0);
    let none_left = app
        .post(&format!("/v1/transfers/{id}/reverse"), Some(m), json!({}))
        .await;
    assert_eq!(none_left.code(), "reversal_exceeds_original");
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    assert_eq!(
        app.post(
            &format!("/v1/transfers/{id}/reverse"),
            Some(&cashier),
            json!({})
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_balanced(app, &t).await;
}

async fn transfers_with_several_credit_legs_reverse_leg_by_leg(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    let c = customer_account(app, &t, "USD").await;
    deposit(app, m, &a, 1_000).await;
    let tr = app
        .post(
            "/v1/transfers",
            Some(m),
            json!({ "amount": 500, "currency": "USD", "debit_account_id": a,
                    "credits": [{ "account_id": b, "amount": 300 }, { "account_id": c, "amount": 200 }] }),
        )
        .await;
    assert_eq!(tr.status, StatusCode::CREATED, "{tr:?}");
    let id = tr.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/transfers/{id}/reverse");

    // An amount alone is ambiguous across legs (unless it is everything left).
    let vague = app.post(&path, Some(m), json!({ "amount": 100 })).await;
    assert_eq!(
        (vague.status, vague.code()),
        (StatusCode::BAD_REQUEST, "parameter_invalid")
    );
    assert_eq!(vague.body["error"]["param"], "legs");
    let stranger = app
        .post(
            &path,
            Some(m),
            json!({ "legs": [{ "account_id": a, "amount": 1 }] }),
        )
        .await;
    assert_eq!(stranger.body["error"]["param"], "legs[0].account_id");
    let beyond = app
        .post(
            &path,
            Some(m),
            json!({ "legs": [{ "account_id": c, "amount": 201 }] }),
        )
        .await;
    assert_eq!(beyond.code(), "reversal_exceeds_original");

    // One leg gives back part of what it received.
    let one = app
        .post(
            &path,
            Some(m),
            json!({ "legs": [{ "account_id": b, "amount": 100 }] }),
        )
        .await;
    assert_eq!(one.status, StatusCode::CREATED, "{one:?}");
    assert_eq!(
        one.body["debits"],
        json!([{ "account_id": b, "amount": 100 }])
    );
    assert_eq!(
        one.body["credits"],
        json!([{ "account_id": a, "amount": 100 }])
    );
    assert_eq!(balance(app, m, &b).await, 200);

    // The rest, from every leg at once, in one transfer.
    let rest = app.post(&path, Some(m), json!({})).await;
    assert_eq!(rest.status, StatusCode::CREATED, "{rest:?}");
    assert_eq!(rest.body["amount"], 400);
    assert_eq!(rest.body["debits"].as_array().unwrap().len(), 2);
    assert_eq!(rest.body["reverses_id"], id.as_str());
    assert_eq!(
        (
            balance(app, m, &a).await,
            balance(app, m, &b).await,
            balance(app, m, &c).await
        ),
        (1_000, 0, 0)
    );
    let none_left = app.post(&path, Some(m), json!({})).await;
    assert_eq!(none_left.code(), "reversal_exceeds_original");
    assert_balanced(app, &t).await;
}

async fn holds_take_idempotency_keys_and_show_pending_credits(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    deposit(app, m, &a, 1_000).await;
    let hold = |key: &str, amount: i64, secs: i64| {
        let body = json!({ "account_id": a, "credit_account_id": b, "amount": amount,
                           "currency": "USD", "expires_in_seconds": secs });
        Request::post("/v1/holds")
            .header("authorization", format!("Bearer {m}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let account = |id: String, token: String| async move {
        app.get(&format!("/v1/accounts/{id}"), &token).await.body
    };
    let first = app.send(hold("hold-1", 300, 600)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.body["credit_account_id"], b.as_str());
    let again = app.send(hold("hold-1", 300, 600)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(again.body, first.body, "the same hold, not a second one");
    let other = app.send(hold("hold-1", 301, 600)).await;
    assert_eq!(other.code(), "idempotency_key_reused");
    let held = account(a.clone(), m.clone()).await;
    assert_eq!(
        (
            held["pending_debits"].as_i64(),
            held["available_balance"].as_i64()
        ),
        (Some(300), Some(700))
    );
    let dest = account(b.clone(), m.clone()).await;
    assert_eq!(
        dest["pending_credits"], 300,
        "the destination shows what is coming"
    );
    assert_eq!(
        dest["available_balance"], 0,
        "pending credits are not spendable"
    );

    // Captured without naming the destination: the hold's own is credited.
    let hid = first.body["id"].as_str().unwrap();
    let cap = app
        .post(
            &format!("/v1/holds/{hid}/capture"),
            Some(m),
            json!({ "amount": 250 }),
        )
        .await;
    assert_eq!(cap.status, StatusCode::CREATED, "{cap:?}");
    assert_eq!(
        cap.body["credits"],
        json!([{ "account_id": b, "amount": 250 }])
    );
    let dest = account(b.clone(), m.clone()).await;
    assert_eq!(
        (
            dest["posted_balance"].as_i64(),
            dest["pending_credits"].as_i64()
        ),
        (Some(250), Some(0))
    );
    assert_eq!(
        account(a.clone(), m.clone()).await["available_balance"],
        750
    );
    // A retry of the hold's creation still answers what its creation said.
    let late = app.send(hold("hold-1", 300, 600)).await;
    assert_eq!(late.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(
        late.body, first.body,
        "the hold as created, though it is captured since"
    );

    // Expiry releases both sides at once, and the writer releases them for good.
    app.send(hold("hold-2", 100, 60)).await;
    assert_eq!(account(b.clone(), m.clone()).await["pending_credits"], 100);
    app.clock.advance_seconds(61);
    let fresh = app.token(Some("acme"), "manager@acme.test").await;
    assert_eq!(
        account(b.clone(), fresh.clone()).await["pending_credits"],
        0
    );
    assert_eq!(account(a.clone(), fresh.clone()).await["pending_debits"], 0);
    assert_eq!(
        transfer(app, &fresh, &a, &b, 750).await.status,
        StatusCode::CREATED
    );
    let stored: (i64, i64) = {
        let row = app
            .core
            .store
            .get_account(&kasho::ids::TenantId::parse(&t.id).unwrap(), &b)
            .await
            .unwrap()
            .unwrap();
        (row.pending_debits, row.pending_credits)
    };
    assert_eq!(
        stored,
        (0, 0),
        "the expired hold was released in storage by the next movement"
    );
    assert_balanced(app, &t).await;
}

async fn holds_reserve_funds_until_captured_voided_or_expired(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    deposit(app, m, &a, 1_000).await;
    let hold = |amount: i64, secs: i64| {
        app.post("/v1/holds", Some(m), json!({ "account_id": a, "amount": amount, "currency": "USD", "expires_in_seconds": secs }))
    };
    let h = hold(700, 600).await;
    assert_eq!(h.status, StatusCode::CREATED, "{h:?}");
    assert_eq!(h.body["status"], "active");
    let acc = app.get(&format!("/v1/accounts/{a}"), m).await.body;
    assert_eq!(
        (
            acc["posted_balance"].as_i64(),
            acc["available_balance"].as_i64(),
            acc["pending_debits"].as_i64()
        ),
        (Some(1_000), Some(300), Some(700))
    );
    assert_eq!(
        transfer(app, m, &a, &b, 301).await.code(),
        "insufficient_funds",
        "the hold counts against the available balance"
    );
    assert_eq!(hold(400, 600).await.code(), "insufficient_funds");

    // Partial capture: 500 moves, the other 200 is released.
    let hid = h.body["id"].as_str().unwrap();
    let c = app
        .post(
            &format!("/v1/holds/{hid}/capture"),
            Some(m),
            json!({ "credit_account_id": b, "amount": 500 }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    assert_eq!(c.body["kind"], "capture");
    let acc = app.get(&format!("/v1/accounts/{a}"), m).await.body;
    assert_eq!(
        (
            acc["posted_balance"].as_i64(),
            acc["available_balance"].as_i64()
        ),
        (Some(500), Some(500))
    );
    assert_eq!(
        app.get(&format!("/v1/holds/{hid}"), m).await.body["status"],
        "captured"
    );
    assert_eq!(
        app.post(
            &format!("/v1/holds/{hid}/capture"),
            Some(m),
            json!({ "credit_account_id": b })
        )
        .await
        .code(),
        "hold_not_active"
    );

    // Void releases it all.
    let v = hold(100, 600).await;
    let vid = v.body["id"].as_str().unwrap();
    assert_eq!(
        app.post(&format!("/v1/holds/{vid}/void"), Some(m), json!({}))
            .await
            .body["status"],
        "voided"
    );
    assert_eq!(
        app.get(&format!("/v1/accounts/{a}"), m).await.body["available_balance"],
        500
    );

    // Expiry: the hold stops counting at its expiry, before anything releases it.
    let e = hold(450, 60).await;
    assert_eq!(
        app.get(&format!("/v1/accounts/{a}"), m).await.body["available_balance"],
        50
    );
    app.clock.advance_seconds(61);
    let fresh = app.token(Some("acme"), "manager@acme.test").await;
    assert_eq!(
        app.get(&format!("/v1/accounts/{a}"), &fresh).await.body["available_balance"],
        500
    );
    assert_eq!(
        app.get(
            &format!("/v1/holds/{}", e.body["id"].as_str().unwrap()),
            &fresh
        )
        .await
        .body["status"],
        "expired"
    );
    assert_eq!(
        transfer(app, &fresh, &a, &b, 500).await.status,
        StatusCode::CREATED,
        "expired funds are spendable"
    );
    assert_balanced(app, &t).await;
}

async fn an_expired_idempotency_key_can_be_used_again(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let a = customer_account(app, &t, "USD").await;
    let send = |token: &str, amount: i64| {
        Request::post("/v1/deposits")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "daily-1")
            .body(Body::from(
                json!({ "account_id": a, "amount": amount, "currency": "USD" }).to_string(),
            ))
            .unwrap()
    };
    assert_eq!(
        app.send(send(&t.manager_token, 5)).await.status,
        StatusCode::CREATED
    );
    app.clock.advance_seconds(86_400 + 1);
    let token = app.token(Some("acme"), "manager@acme.test").await;
    let r = app.send(send(&token, 7)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the expired key is free again: {r:?}"
    );
    assert!(r.headers.get("idempotency-replayed").is_none());
    assert_eq!(balance(app, &token, &a).await, 12);
}

backend_tests!(
    two_instances_writing_the_same_accounts_keep_every_invariant,
    transfers_with_several_credit_legs_reverse_leg_by_leg,
    holds_take_idempotency_keys_and_show_pending_credits,
    an_expired_idempotency_key_can_be_used_again,
    reversals_undo_transfers_but_never_more_than_the_original,
    holds_reserve_funds_until_captured_voided_or_expired,
    tenants_get_system_accounts_and_customers_get_one_account_per_currency,
    transfers_move_money_double_entry_with_running_balances,
    the_ledger_refuses_what_breaks_its_rules_and_changes_nothing,
    idempotency_keys_make_retries_safe,
    customers_move_only_their_own_money_and_see_only_their_own_balances,
    ledger_rows_cannot_be_changed_even_with_sql,
    concurrent_clients_on_hot_accounts_keep_every_invariant,
);

/// A monitoring-style check on the extension contract: refuses movements above 5,000, sends
/// those above 1,000 to review, and counts every movement it lets through per subject customer
/// (a running total it reads back under lock) with an event row for each; a customer whose
/// day total would pass 1,500 is sent to review.
struct LimitCheck;

impl LimitCheck {
    fn key(
        ctx_command: &kasho::store::TransferCommand,
        subject: &str,
    ) -> kasho::domain::ledger::CounterKey {
        kasho::domain::ledger::CounterKey::at(
            ctx_command.tenant_id.as_str(),
            subject,
            "test.seen",
            ctx_command.currency.code(),
            kasho::domain::ledger::Period::Day,
            ctx_command.created_at.as_micros(),
        )
    }
}

impl kasho::domain::ledger::PreCommitCheck for LimitCheck {
    fn name(&self) -> &'static str {
        "test-limits"
    }

    fn counters(
        &self,
        command: &kasho::store::TransferCommand,
        subject: Option<&str>,
    ) -> Vec<kasho::domain::ledger::CounterKey> {
        subject.map(|s| Self::key(command, s)).into_iter().collect()
    }

    fn check(
        &self,
        ctx: &kasho::domain::ledger::CheckContext<'_>,
    ) -> kasho::domain::ledger::Verdict {
        use kasho::domain::ledger::{CheckDecision, SideWrite, Verdict};
        let m = ctx.command;
        let amount = m.amount.get();
        let seen = ctx
            .subject
            .map(|s| (Self::key(m, s), ctx.counter(&Self::key(m, s))));
        let event = SideWrite::Event {
            topic: "test.checked".into(),
            payload: format!("{{\"amount\":{amount}}}"),
        };
        match amount {
            a if a > 5_000 => Verdict::of(CheckDecision::Refuse {
                code: "kyc_limit_exceeded",
                message: "over the single-transfer limit".into(),
            }),
            a if a > 1_000 => Verdict::of(CheckDecision::Review {
                reason: "large transfer".into(),
            })
            .with(event),
            a if seen.as_ref().is_some_and(|(_, n)| n + a > 1_500) => {
                Verdict::of(CheckDecision::Review {
                    reason: "day total".into(),
                })
            }
            _ => {
                let v = Verdict::allow().with(event);
                match seen {
                    Some((key, _)) => v.with(SideWrite::Count { key, delta: amount }),
                    None => v,
                }
            }
        }
    }
}

async fn the_pre_commit_check_point_allows_refuses_or_holds_for_review(
    backend: crate::support::Backend,
) {
    let app = TestApp::with_checks(backend, vec![std::sync::Arc::new(LimitCheck)]).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(&app, &t, "USD").await;
    let b = customer_account(&app, &t, "USD").await;
    assert_eq!(deposit(&app, m, &a, 900).await.status, StatusCode::CREATED);
    let refused = deposit(&app, m, &a, 6_000).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "kyc_limit_exceeded")
    );

    // Review: 202 with a review hold; nothing posts, the money is reserved, and the holds API
    // can neither capture nor void it.
    let review = app
        .post_with_key(
            "/v1/transfers",
            m,
            "review-1",
            json!({ "amount": 800, "currency": "USD", "debit_account_id": a, "credit_account_id": b }),
        )
        .await;
    assert_eq!(review.status, StatusCode::CREATED, "{review:?}");
    let big = json!({ "amount": 1_200, "currency": "USD", "debit_account_id": b, "credit_account_id": a });
    let too_poor = app.post_with_key("/v1/transfers", m, "review-0", big).await;
    assert_eq!(
        too_poor.code(),
        "insufficient_funds",
        "the ledger's rules come first"
    );
    for _ in 0..2 {
        assert_eq!(
            deposit(&app, m, &a, 1_000).await.status,
            StatusCode::CREATED
        );
    }
    let big = json!({ "amount": 1_200, "currency": "USD", "debit_account_id": a, "credit_account_id": b });
    let held = app
        .post_with_key("/v1/transfers", m, "review-2", big.clone())
        .await;
    assert_eq!(held.status, StatusCode::ACCEPTED, "{held:?}");
    assert_eq!(held.body["object"], "hold");
    assert_eq!(held.body["purpose"], "review");
    assert_eq!(held.body["status"], "active");
    assert_eq!(held.body["amount"], 1_200);
    let hold_id = held.body["id"].as_str().unwrap().to_owned();
    let again = app.post_with_key("/v1/transfers", m, "review-2", big).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{again:?}");
    assert_eq!(
        again.body["id"],
        hold_id.as_str(),
        "a retry answers the same hold"
    );
    let capture = app
        .post(
            &format!("/v1/holds/{hold_id}/capture"),
            Some(m),
            json!({ "amount": 1_200 }),
        )
        .await;
    assert_eq!(capture.code(), "hold_under_review", "{capture:?}");
    let void = app
        .post(&format!("/v1/holds/{hold_id}/void"), Some(m), json!({}))
        .await;
    assert_eq!(void.code(), "hold_under_review", "{void:?}");
    let acc = app.get(&format!("/v1/accounts/{a}"), m).await;
    assert_eq!(acc.body["posted_balance"], 2_100, "{acc:?}");
    assert_eq!(acc.body["pending_debits"], 1_200, "{acc:?}");
    let b_acc = app.get(&format!("/v1/accounts/{b}"), m).await;
    assert_eq!(b_acc.body["pending_credits"], 1_200, "{b_acc:?}");

    // The check's running total (read under lock): 800 seen today, so 800 more goes to review.
    let over = app
        .post_with_key(
            "/v1/transfers",
            m,
            "review-3",
            json!({ "amount": 50, "currency": "USD", "debit_account_id": b, "credit_account_id": a }),
        )
        .await;
    assert_eq!(
        over.status,
        StatusCode::CREATED,
        "b's own total is its own: {over:?}"
    );
    let day = app
        .post_with_key(
            "/v1/transfers",
            m,
            "review-4",
            json!({ "amount": 800, "currency": "USD", "debit_account_id": a, "credit_account_id": b }),
        )
        .await;
    assert_eq!(day.status, StatusCode::ACCEPTED, "{day:?}");

    let totals = app
        .raw_strings(&format!(
            "SELECT subject || ':' || CAST(total AS TEXT) FROM ledger_counters \
             WHERE tenant_id = '{}' AND metric = 'test.seen' ORDER BY subject",
            t.id
        ))
        .await;
    assert_eq!(
        totals.len(),
        2,
        "one total per subject customer: {totals:?}"
    );
    let events = app
        .raw_strings(&format!(
            "SELECT topic FROM ledger_events WHERE tenant_id = '{}'",
            t.id
        ))
        .await;
    // Three deposits (no subject), the 800 and 50 transfers, and the 1,200 held for review.
    assert_eq!(events.len(), 6, "{events:?}");
    let chain = app.audit_chain(&t.id).await;
    assert!(
        chain
            .iter()
            .any(|e| e.reason.as_deref() == Some("kyc_limit_exceeded") && e.outcome == "failure")
    );
    assert!(
        chain
            .iter()
            .any(|e| e.reason.as_deref() == Some("held_for_review") && e.outcome == "success")
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_point_sqlite() {
    the_pre_commit_check_point_allows_refuses_or_holds_for_review(crate::support::Backend::Sqlite)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_point_postgres() {
    the_pre_commit_check_point_allows_refuses_or_holds_for_review(
        crate::support::Backend::Postgres,
    )
    .await;
}

async fn batches_post_each_transfer_or_with_atomic_all_or_nothing(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let a = customer_account(app, &t, "USD").await;
    let b = customer_account(app, &t, "USD").await;
    deposit(app, m, &a, 1_000).await;
    let tr = |amount: i64| json!({ "amount": amount, "currency": "USD", "debit_account_id": a, "credit_account_id": b });

    // Independent: each gets its own result.
    let r = app
        .post(
            "/v1/transfers/batch",
            Some(m),
            json!({ "transfers": [tr(100), tr(5_000), tr(200)] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|x| x["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![201, 422, 201]
    );
    assert_eq!(results[1]["error"]["error"]["code"], "insufficient_funds");
    // A transfer refused before posting is audited too: with the batch's other refusals, in
    // one record counting them per code.
    let r = app
        .post(
            "/v1/transfers/batch",
            Some(m),
            json!({ "transfers": [tr(1), tr(0)] }),
        )
        .await;
    assert_eq!(r.body["results"][1]["status"], 400);
    let chain = app.audit_chain(&t.id).await;
    assert!(chain.iter().any(
        |e| e.action == "transfer.batch" && e.reason.as_deref() == Some("parameter_invalid=1")
    ));
    assert_eq!(balance(app, m, &a).await, 699);

    // Atomic: one refusal and nothing is posted.
    let r = app
        .post(
            "/v1/transfers/batch",
            Some(m),
            json!({ "atomic": true, "transfers": [tr(100), tr(5_000)] }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "batch_failed"),
        "{r:?}"
    );
    assert_eq!(r.body["error"]["param"], "transfers[1]");
    assert_eq!(
        balance(app, m, &a).await,
        699,
        "nothing from the failed atomic batch"
    );
    let r = app
        .post(
            "/v1/transfers/batch",
            Some(m),
            json!({ "atomic": true, "transfers": [tr(100), tr(50)] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(balance(app, m, &a).await, 549);

    // A retried batch with the same key replays every transfer.
    let send = || {
        Request::post("/v1/transfers/batch")
            .header("authorization", format!("Bearer {m}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "batch-7")
            .body(Body::from(
                json!({ "transfers": [tr(10), tr(20)] }).to_string(),
            ))
            .unwrap()
    };
    let first = app.send(send()).await;
    let again = app.send(send()).await;
    assert_eq!(
        first.body["results"][0]["transfer"]["id"],
        again.body["results"][0]["transfer"]["id"]
    );
    assert_eq!(balance(app, m, &a).await, 519, "posted once");

    let too_many: Vec<Value> = (0..1001).map(|_| tr(1)).collect();
    let r = app
        .post(
            "/v1/transfers/batch",
            Some(m),
            json!({ "transfers": too_many }),
        )
        .await;
    assert_eq!(r.body["error"]["param"], "transfers");
    assert_balanced(app, &t).await;
}

mod batch_backends {
    use crate::backend_tests;
    use crate::support::TestApp;

    async fn batches_post_each_transfer_or_with_atomic_all_or_nothing(app: &TestApp) {
        super::batches_post_each_transfer_or_with_atomic_all_or_nothing(app).await;
    }

    backend_tests!(batches_post_each_transfer_or_with_atomic_all_or_nothing);
}
