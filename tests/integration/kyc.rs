//! KYC: tier limits enforced by the ledger (each limit, UTC day and month resets, max balance,
//! fail closed once a currency is configured, reversals exempt, concurrency), the verification
//! workflow (submission with documents, queue, approval, rejection, history, one decision),
//! document checks, encryption at rest and download, and roles.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use kasho::clock::Timestamp;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::backend_tests;
use crate::support::{Resp, TenantFixture, TestApp};

/// 2026-03-30T23:30:00Z: half an hour before a UTC day ends, a day before the month ends.
const T0: i64 = 1_774_913_400;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn png(marker: &str) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(marker.as_bytes());
    v.extend_from_slice(&[0u8, 1, 2, 3, 255]);
    v
}

fn pdf(marker: &str) -> Vec<u8> {
    format!("%PDF-1.7\n{marker}\n%%EOF\n").into_bytes()
}

async fn put(app: &TestApp, path: &str, token: &str, body: Value) -> Resp {
    app.request(Method::PUT, path, Some(token), Some(body))
        .await
}

/// A customer (optionally linked to a new CUSTOMER user) with a USD account.
/// Returns (customer id, account id, the customer's token if linked).
async fn customer(
    app: &TestApp,
    t: &TenantFixture,
    linked: bool,
) -> (String, String, Option<String>) {
    let (user, token) = if linked {
        let (id, token) = app.user_token(t, &["CUSTOMER"]).await;
        (Some(id), Some(token))
    } else {
        (None, None)
    };
    let body = match &user {
        Some(u) => json!({ "user_id": u }),
        None => json!({}),
    };
    let c = app
        .post("/v1/customers", Some(&t.manager_token), body)
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let id = c.body["id"].as_str().unwrap().to_owned();
    let a = app
        .post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": id, "currency": "USD" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    (id, a.body["id"].as_str().unwrap().to_owned(), token)
}

async fn deposit(app: &TestApp, token: &str, account: &str, amount: i64) -> Resp {
    app.post(
        "/v1/deposits",
        Some(token),
        json!({ "account_id": account, "amount": amount, "currency": "USD" }),
    )
    .await
}

async fn withdraw(app: &TestApp, token: &str, account: &str, amount: i64) -> Resp {
    app.post(
        "/v1/withdrawals",
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

/// Asserts a KYC refusal naming `limit` with `param`.
fn assert_limit(r: &Resp, limit: &str, param: &str) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.code(), "kyc_limit_exceeded", "{r:?}");
    assert_eq!(r.body["error"]["param"], param, "{r:?}");
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains(limit),
        "the message names {limit}: {r:?}"
    );
}

fn usd_limits() -> Value {
    json!({
        "currency": "USD",
        "tiers": [
            { "tier": 0, "max_single_transfer": 1_000, "daily_outgoing": 1_500, "monthly_outgoing": 2_500, "max_balance": 5_000 },
            { "tier": 1, "max_single_transfer": 5_000, "daily_outgoing": 10_000, "monthly_outgoing": 50_000, "max_balance": 100_000 },
            { "tier": 2, "max_single_transfer": 50_000, "daily_outgoing": 100_000, "monthly_outgoing": 500_000, "max_balance": 1_000_000 },
            { "tier": 3, "max_single_transfer": null, "daily_outgoing": null, "monthly_outgoing": null, "max_balance": null }
        ]
    })
}

/// Signs the manager in again (after the clock moved past the access token's life).
async fn manager(app: &TestApp, t: &TenantFixture) -> String {
    app.token(Some(&t.slug), &format!("manager@{}.test", t.slug))
        .await
}

async fn kyc_failures(app: &TestApp, t: &TenantFixture) -> usize {
    app.audit_chain(&t.id)
        .await
        .iter()
        .filter(|e| e.outcome == "failure" && e.reason.as_deref() == Some("kyc_limit_exceeded"))
        .count()
}

async fn each_limit_refuses_with_its_name_and_resets_with_the_utc_day_and_month(app: &TestApp) {
    app.clock.set(Timestamp::from_unix_seconds(T0));
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let r = put(app, "/v1/kyc/limits", &m, usd_limits()).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let (_, a, _) = customer(app, &t, false).await;
    let (_, b, _) = customer(app, &t, false).await;

    // Max balance on deposit: 5,000 at tier 0.
    assert_eq!(
        deposit(app, &m, &a, 4_000).await.status,
        StatusCode::CREATED
    );
    let r = deposit(app, &m, &a, 1_001).await;
    assert_limit(&r, "max_balance", "amount");
    assert_eq!(balance(app, &m, &a).await, 4_000, "nothing was posted");
    assert_eq!(
        deposit(app, &m, &a, 1_000).await.status,
        StatusCode::CREATED
    );
    // ...and on a transfer's credit leg, without disclosing the recipient's balance.
    let (_, c, _) = customer(app, &t, false).await;
    assert_eq!(
        deposit(app, &m, &c, 4_600).await.status,
        StatusCode::CREATED
    );
    let r = transfer(app, &m, &a, &c, 401).await;
    assert_limit(&r, "max_balance", "credits[0].amount");
    assert!(
        !r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4600"),
        "{r:?}"
    );
    assert_eq!(balance(app, &m, &a).await, 5_000);
    assert_eq!(balance(app, &m, &c).await, 4_600);

    // Single transfer: 1,000.
    let r = transfer(app, &m, &a, &b, 1_001).await;
    assert_limit(&r, "max_single_transfer", "amount");
    // Daily outgoing: 1,500 (the withdrawal of b does not count for a).
    assert_eq!(
        transfer(app, &m, &a, &b, 900).await.status,
        StatusCode::CREATED
    );
    let r = transfer(app, &m, &a, &b, 601).await;
    assert_limit(&r, "daily_outgoing", "amount");
    let r = withdraw(app, &m, &a, 601).await;
    assert_limit(&r, "daily_outgoing", "amount");
    assert_eq!(
        transfer(app, &m, &a, &b, 600).await.status,
        StatusCode::CREATED
    );
    assert_eq!(balance(app, &m, &a).await, 3_500);
    assert_eq!(balance(app, &m, &b).await, 1_500);

    // The next UTC day (same month): the daily total starts again, the monthly one does not.
    app.clock.advance_seconds(45 * 60);
    let m = manager(app, &t).await;
    assert_eq!(
        transfer(app, &m, &a, &b, 900).await.status,
        StatusCode::CREATED
    );
    // Month so far: 1,500 + 900 = 2,400 of 2,500.
    let r = transfer(app, &m, &a, &b, 101).await;
    assert_limit(&r, "monthly_outgoing", "amount");
    let r = withdraw(app, &m, &a, 101).await;
    assert_limit(&r, "monthly_outgoing", "amount");
    assert_eq!(withdraw(app, &m, &a, 100).await.status, StatusCode::CREATED);
    assert_eq!(balance(app, &m, &a).await, 2_500);

    // The next UTC month: both totals start again.
    app.clock.advance_seconds(86_400);
    let m = manager(app, &t).await;
    assert_eq!(
        transfer(app, &m, &a, &b, 1_000).await.status,
        StatusCode::CREATED
    );
    assert_eq!(balance(app, &m, &a).await, 1_500);
    assert_eq!(balance(app, &m, &b).await, 3_400);

    let sums = app
        .core
        .store
        .balance_sums(&kasho::ids::TenantId::parse(&t.id).unwrap())
        .await
        .unwrap();
    assert!(sums.iter().all(|(_, s)| *s == 0), "{sums:?}");
    // Every refusal was audited as a failure with the code.
    assert_eq!(kyc_failures(app, &t).await, 7);
}

async fn unconfigured_currencies_are_free_configured_ones_fail_closed_and_reversals_pass(
    app: &TestApp,
) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = &t.manager_token;
    let got = app.get("/v1/kyc/limits", m).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(got.body["object"], "kyc_limits");
    let currencies = got.body["currencies"].as_array().unwrap();
    assert_eq!(currencies.len(), 2);
    assert!(currencies.iter().all(|c| c["configured"] == false));

    let (_, a, _) = customer(app, &t, false).await;
    let (_, b, _) = customer(app, &t, false).await;
    // No limits: anything goes.
    assert_eq!(
        deposit(app, m, &a, 1_000_000_000).await.status,
        StatusCode::CREATED
    );
    let tr = transfer(app, m, &a, &b, 500_000_000).await;
    assert_eq!(tr.status, StatusCode::CREATED, "{tr:?}");
    let trf = tr.body["id"].as_str().unwrap().to_owned();

    // Invalid tables are refused naming the parameter, and change nothing.
    for (body, param) in [
        (
            json!({ "currency": "USD", "tiers": [{ "tier": 0, "max_single_transfer": -1, "daily_outgoing": null, "monthly_outgoing": null, "max_balance": null }] }),
            "tiers[0].max_single_transfer",
        ),
        (
            json!({ "currency": "USD", "tiers": [{ "tier": 0, "max_single_transfer": null, "daily_outgoing": 11, "monthly_outgoing": 10, "max_balance": null }] }),
            "tiers[0].daily_outgoing",
        ),
        (
            json!({ "currency": "USD", "tiers": [
            { "tier": 1, "max_single_transfer": 100, "daily_outgoing": null, "monthly_outgoing": null, "max_balance": null },
            { "tier": 2, "max_single_transfer": 99, "daily_outgoing": null, "monthly_outgoing": null, "max_balance": null }
        ] }),
            "tiers[1].max_single_transfer",
        ),
        (
            json!({ "currency": "USD", "tiers": [{ "tier": 4, "max_single_transfer": null, "daily_outgoing": null, "monthly_outgoing": null, "max_balance": null }] }),
            "tiers[0].tier",
        ),
        (json!({ "currency": "USD", "tiers": [] }), "tiers"),
        (
            json!({ "currency": "EUR", "tiers": [{ "tier": 0, "max_single_transfer": null, "daily_outgoing": null, "monthly_outgoing": null, "max_balance": null }] }),
            "currency",
        ),
    ] {
        let r = put(app, "/v1/kyc/limits", m, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
        assert_eq!(r.body["error"]["param"], param, "{r:?}");
    }
    let again = app.get("/v1/kyc/limits", m).await;
    assert_eq!(again.body, got.body, "invalid tables changed nothing");

    // USD configured for tier 1 only: tier-0 customers can neither send nor receive USD.
    let r = put(
        app,
        "/v1/kyc/limits",
        m,
        json!({ "currency": "USD", "tiers": [{ "tier": 1, "max_single_transfer": null, "daily_outgoing": null, "monthly_outgoing": null, "max_balance": null }] }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let got = app.get("/v1/kyc/limits", m).await;
    let usd = got.body["currencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["currency"] == "USD")
        .unwrap()
        .clone();
    assert_eq!(usd["configured"], true);
    assert_eq!(usd["tiers"][0]["tier"], 1);
    let ngn = got.body["currencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["currency"] == "NGN")
        .unwrap()
        .clone();
    assert_eq!(ngn["configured"], false, "NGN is still unconfigured");
    assert_limit(
        &deposit(app, m, &a, 1).await,
        "currency_not_permitted",
        "currency",
    );
    assert_limit(
        &transfer(app, m, &a, &b, 1).await,
        "currency_not_permitted",
        "currency",
    );
    assert_limit(
        &withdraw(app, m, &b, 1).await,
        "currency_not_permitted",
        "currency",
    );

    // A reversal is not refused by KYC (money goes back where it came from).
    let rev = app
        .post(&format!("/v1/transfers/{trf}/reverse"), Some(m), json!({}))
        .await;
    assert_eq!(rev.status, StatusCode::CREATED, "{rev:?}");
    assert_eq!(balance(app, m, &a).await, 1_000_000_000);
    assert_eq!(balance(app, m, &b).await, 0);
    // Limits changes are audited.
    assert!(
        app.audit_chain(&t.id)
            .await
            .iter()
            .any(|e| e.action == "kyc.limits.update" && e.outcome == "success")
    );
}

/// The daily total is a running total kept under the posting lock: exact across instances, and
/// seeded from the ledger when limits are configured mid-day (what was sent before counts).
async fn concurrent_transfers_cannot_both_pass_a_daily_limit(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let (_, a, _) = customer(app, &t, false).await;
    let (_, b, _) = customer(app, &t, false).await;
    assert_eq!(
        deposit(app, &m, &a, 10_000).await.status,
        StatusCode::CREATED
    );
    // Sent today before the currency had limits.
    assert_eq!(
        transfer(app, &m, &a, &b, 400).await.status,
        StatusCode::CREATED
    );
    let r = put(
        app,
        "/v1/kyc/limits",
        &m,
        json!({ "currency": "USD", "tiers": [{ "tier": 0, "max_single_transfer": null, "daily_outgoing": 1_000, "monthly_outgoing": null, "max_balance": null }] }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // Half the requests through a second instance on the same database.
    let other = app.second_instance().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let router = if i % 2 == 0 {
            app.router.clone()
        } else {
            other.clone()
        };
        let body = json!({ "amount": 300, "currency": "USD", "debit_account_id": a, "credit_account_id": b });
        let token = m.clone();
        tasks.spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/transfers")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        });
    }
    let mut posted = 0;
    let mut refused = 0;
    while let Some(s) = tasks.join_next().await {
        match s.unwrap() {
            StatusCode::CREATED => posted += 1,
            StatusCode::UNPROCESSABLE_ENTITY => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        (posted, refused),
        (2, 10),
        "exactly two of 300 fit the 600 left of 1,000"
    );
    assert_eq!(balance(app, &m, &a).await, 10_000 - 400 - 600);
    let sql = format!(
        "SELECT period || ':' || CAST(total AS TEXT) FROM ledger_counters WHERE tenant_id = '{}' \
         ORDER BY period",
        t.id
    );
    assert_eq!(app.raw_strings(&sql).await, ["day:1000", "month:1000"]);
    // Long-closed windows are purged by the retention job; today's stay.
    let r = kasho::service::retention::run_once(&app.core, app.clock_now())
        .await
        .unwrap();
    assert_eq!(app.raw_strings(&sql).await.len(), 2, "{r:?}");
    app.clock.advance_seconds(101 * 86_400);
    kasho::service::retention::run_once(&app.core, app.clock_now())
        .await
        .unwrap();
    assert!(app.raw_strings(&sql).await.is_empty());
}

/// A compliance officer's token.
async fn officer(app: &TestApp, t: &TenantFixture) -> String {
    app.user_token(t, &["COMPLIANCE_OFFICER"]).await.1
}

fn submission(tier: i64, docs: &[(&str, &str, &[u8])]) -> Value {
    json!({
        "requested_tier": tier,
        "documents": docs.iter().map(|(ty, ct, bytes)| json!({
            "document_type": ty, "content_type": ct, "content": b64(bytes)
        })).collect::<Vec<_>>()
    })
}

async fn the_workflow_raises_a_tier_once_and_keeps_every_step(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    assert_eq!(
        put(app, "/v1/kyc/limits", &m, usd_limits()).await.status,
        StatusCode::OK
    );
    let (cus, acc, ctoken) = customer(app, &t, true).await;
    let ctoken = ctoken.unwrap();
    let (other, _, other_token) = customer(app, &t, true).await;
    let other_token = other_token.unwrap();
    let (_, sink, _) = customer(app, &t, false).await;
    assert_eq!(
        deposit(app, &m, &acc, 5_000).await.status,
        StatusCode::CREATED
    );
    assert_limit(
        &transfer(app, &ctoken, &acc, &sink, 3_000).await,
        "max_single_transfer",
        "amount",
    );

    // The customer submits for itself; not for someone else.
    let passport = png("passport-scan");
    let address = pdf("utility-bill");
    let body = submission(
        2,
        &[
            ("passport", "image/png", &passport),
            ("proof_of_address", "application/pdf", &address),
        ],
    );
    let theirs = app
        .post(
            &format!("/v1/customers/{other}/kyc/submissions"),
            Some(&ctoken),
            body.clone(),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{theirs:?}");
    let s = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&ctoken),
            body.clone(),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    assert_eq!(s.body["object"], "kyc_submission");
    assert_eq!(s.body["status"], "submitted");
    assert_eq!(s.body["tier_at_submission"], 0);
    let sid = s.body["id"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("kyc_"));
    let docs = s.body["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert!(
        docs.iter().all(|d| d.get("content").is_none()),
        "metadata only"
    );
    assert_eq!(docs[0]["size_bytes"], passport.len());
    assert_eq!(
        docs[0]["sha256"],
        kasho::crypto::sha256_hex(&passport).as_str()
    );
    // One open submission at a time.
    let dup = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&ctoken),
            body.clone(),
        )
        .await;
    assert_eq!(
        (dup.status, dup.code()),
        (StatusCode::CONFLICT, "kyc_submission_open")
    );

    // The queue.
    let co = officer(app, &t).await;
    let q = app.get("/v1/kyc/submissions?status=submitted", &co).await;
    assert_eq!(q.status, StatusCode::OK, "{q:?}");
    assert_eq!(q.body["object"], "list");
    let queue = q.body["data"].as_array().unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0]["id"], sid.as_str());
    let bad = app.get("/v1/kyc/submissions?status=pending", &co).await;
    assert_eq!(bad.body["error"]["param"], "status");
    // A customer's queue view holds only its own submissions.
    let own = app.get("/v1/kyc/submissions", &other_token).await;
    assert_eq!(own.body["data"].as_array().unwrap().len(), 0, "{own:?}");

    // Only a compliance officer decides.
    let approve = |token: String, tier: i64| {
        let path = format!("/v1/kyc/submissions/{sid}/approve");
        async move {
            app.post(
                &path,
                Some(&token),
                json!({ "tier": tier, "note": "documents verified" }),
            )
            .await
        }
    };
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    for token in [ctoken.clone(), m.clone(), cashier.clone()] {
        let r = approve(token, 2).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    }
    let bad_tier = approve(co.clone(), 5).await;
    assert_eq!(bad_tier.body["error"]["param"], "tier");
    let ok = approve(co.clone(), 2).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.body["status"], "approved");
    assert_eq!(ok.body["decision"]["tier_after"], 2);
    // The note is sealed and staff-only: the decision names it, never shows it.
    assert_eq!(ok.body["decision"]["reason_code"], "approved");
    assert!(
        ok.body["decision"]["note_id"]
            .as_str()
            .unwrap()
            .starts_with("stn_")
    );
    assert!(!ok.body.to_string().contains("documents verified"));
    // Decided once.
    let again = approve(co.clone(), 3).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "kyc_already_decided")
    );
    let rej = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/reject"),
            Some(&co),
            json!({ "reason": "other" }),
        )
        .await;
    assert_eq!(rej.status, StatusCode::CONFLICT, "{rej:?}");

    // Tier 2's limits apply now.
    let tr = transfer(app, &ctoken, &acc, &sink, 3_000).await;
    assert_eq!(tr.status, StatusCode::CREATED, "{tr:?}");

    // A second submission, rejected with a reason: the tier stays.
    // (By a cashier: the manager appointed the officer, so its submissions go to an officer
    // it did not appoint, see tests/integration/duties.rs.)
    let s2 = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&cashier),
            submission(
                3,
                &[("selfie", "image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3])],
            ),
        )
        .await;
    assert_eq!(
        s2.status,
        StatusCode::CREATED,
        "staff submit on the customer's behalf: {s2:?}"
    );
    let sid2 = s2.body["id"].as_str().unwrap().to_owned();
    let no_reason = app
        .post(
            &format!("/v1/kyc/submissions/{sid2}/reject"),
            Some(&co),
            json!({ "reason": " " }),
        )
        .await;
    assert_eq!(no_reason.body["error"]["param"], "reason");
    let rej = app
        .post(
            &format!("/v1/kyc/submissions/{sid2}/reject"),
            Some(&co),
            json!({ "reason": "selfie_mismatch", "note": "selfie does not match the passport" }),
        )
        .await;
    assert_eq!(rej.status, StatusCode::OK, "{rej:?}");
    assert_eq!(rej.body["status"], "rejected");
    assert_eq!(rej.body["decision"]["tier_after"], 2);

    // The history: every step, newest first, readable by the customer, the officer and an
    // auditor; not by another customer.
    let (_, auditor) = app.user_token(&t, &["AUDITOR"]).await;
    for token in [&ctoken, &co, &auditor, &m] {
        let h = app.get(&format!("/v1/customers/{cus}/kyc"), token).await;
        assert_eq!(h.status, StatusCode::OK, "{h:?}");
        assert_eq!(h.body["tier"], 2);
        let history = h.body["history"].as_array().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0]["id"], sid2.as_str());
        // Staff see the staff's code; the customer only the customer-facing one.
        let d = &history[0]["decision"];
        assert_eq!(d["customer_reason_code"], "selfie_mismatch");
        let expected = if token == &ctoken {
            Value::Null
        } else {
            json!("selfie_mismatch")
        };
        assert_eq!(d["reason_code"], expected, "{d}");
        assert!(!h.body.to_string().contains("does not match"));
        assert_eq!(history[1]["status"], "approved");
        assert_eq!(history[1]["documents"].as_array().unwrap().len(), 2);
        assert_eq!(history[0]["documents"].as_array().unwrap().len(), 1);
    }
    let peek = app
        .get(&format!("/v1/customers/{cus}/kyc"), &other_token)
        .await;
    assert_eq!(peek.status, StatusCode::NOT_FOUND);
    let (_, agent) = app.user_token(&t, &["AGENT"]).await;
    assert_eq!(
        app.get(&format!("/v1/customers/{cus}/kyc"), &agent)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Each step is in the audit chain.
    let chain = app.audit_chain(&t.id).await;
    let count = |action: &str| {
        chain
            .iter()
            .filter(|e| e.action == action && e.outcome == "success")
            .count()
    };
    assert_eq!(count("kyc.submission.create"), 2);
    assert_eq!(count("kyc.document.upload"), 3);
    assert_eq!(count("kyc.submission.approve"), 1);
    assert_eq!(count("kyc.submission.reject"), 1);
    assert!(
        chain
            .iter()
            .any(|e| e.action == "kyc.submission.approve" && e.outcome == "denied")
    );
    // The free text is a staff note, sealed at rest; decisions hold codes only.
    assert_eq!(
        app.raw_sql("UPDATE staff_notes SET note = note WHERE note LIKE '%selfie%' OR note LIKE '%verified%'")
            .await,
        0
    );
    assert_eq!(
        app.raw_sql("UPDATE staff_notes SET note = note WHERE note LIKE 'kx1.%'")
            .await,
        2
    );
    assert_eq!(
        app.raw_sql("UPDATE kyc_decisions SET reason = reason WHERE reason IS NOT NULL")
            .await,
        0
    );
    // Decisions are append-only in storage (only the sealed reason may be re-encrypted).
    assert!(
        app.try_raw_sql("UPDATE kyc_decisions SET tier_after = 3")
            .await
            .is_err()
    );
    assert!(app.try_raw_sql("DELETE FROM kyc_decisions").await.is_err());
    assert!(
        app.try_raw_sql("UPDATE kyc_decisions SET reason_code = 'other'")
            .await
            .is_err()
    );
    assert!(
        app.try_raw_sql("UPDATE staff_notes SET reason_code = 'other'")
            .await
            .is_err()
    );
    assert!(app.try_raw_sql("DELETE FROM staff_notes").await.is_err());
    assert!(
        app.try_raw_sql(&format!(
            "UPDATE kyc_submissions SET status = 'submitted' WHERE id = '{sid}'"
        ))
        .await
        .is_err(),
        "a decided submission cannot be reopened"
    );
}

async fn nobody_decides_their_own_submission(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    // A user who may both submit (CASHIER) and decide (COMPLIANCE_OFFICER).
    let (_, both) = app.user_token(&t, &["CASHIER", "COMPLIANCE_OFFICER"]).await;
    let (cus, _, _) = customer(app, &t, false).await;
    let s = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&both),
            submission(1, &[("passport", "application/pdf", &pdf("p"))]),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    let sid = s.body["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/approve"),
            Some(&both),
            json!({ "tier": 1 }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "kyc_self_decision")
    );
    let other = officer(app, &t).await;
    let r = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/approve"),
            Some(&other),
            json!({ "tier": 1 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // Another tenant's submission answers 404 like a missing one.
    let t2 = app.tenant(&admin, "other").await;
    let co2 = officer(app, &t2).await;
    let r = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/reject"),
            Some(&co2),
            json!({ "reason": "x" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    let h = app
        .get(&format!("/v1/customers/{cus}/kyc"), &t2.manager_token)
        .await;
    assert_eq!(h.status, StatusCode::NOT_FOUND);
}

async fn documents_are_checked_sealed_and_downloaded_intact(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let (cus, _, _) = customer(app, &t, false).await;
    let path = format!("/v1/customers/{cus}/kyc/submissions");
    let marker = "PLAINTEXT-MARKER-7f3a";
    let image = png(marker);
    let too_big = {
        let mut v = pdf("big");
        v.resize(5 * 1024 * 1024 + 1, b'x');
        v
    };
    let five: Vec<(&str, &str, &[u8])> = vec![("selfie", "image/png", &image); 5];
    for (body, param) in [
        (
            submission(1, &[("passport", "application/pdf", &image)]),
            "documents[0].content_type",
        ),
        (
            submission(1, &[("passport", "image/png", b"GIF89a....")]),
            "documents[0].content_type",
        ),
        (
            submission(1, &[("passport", "image/gif", &image)]),
            "documents[0].content_type",
        ),
        (
            submission(
                1,
                &[
                    ("passport", "image/png", &image),
                    ("proof_of_address", "application/pdf", &too_big),
                ],
            ),
            "documents[1].content",
        ),
        (
            submission(1, &[("birth_certificate", "image/png", &image)]),
            "documents[0].document_type",
        ),
        (submission(1, &five), "documents"),
        (submission(1, &[]), "documents"),
        (
            submission(0, &[("passport", "image/png", &image)]),
            "requested_tier",
        ),
        (
            json!({ "requested_tier": 1, "documents": [{ "document_type": "passport", "content_type": "image/png", "content": "not base64!" }] }),
            "documents[0].content",
        ),
    ] {
        let r = app.post(&path, Some(&m), body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{param}: {r:?}");
        assert_eq!(r.body["error"]["param"], param, "{r:?}");
    }
    let co = officer(app, &t).await;
    let q = app.get("/v1/kyc/submissions", &co).await;
    assert!(
        q.body["data"].as_array().unwrap().is_empty(),
        "nothing was stored"
    );
    // Refused uploads were audited as failures.
    assert!(
        app.audit_chain(&t.id)
            .await
            .iter()
            .any(|e| e.action == "kyc.submission.create" && e.outcome == "failure")
    );

    let s = app
        .post(
            &path,
            Some(&m),
            submission(1, &[("passport", "image/png", &image)]),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    let doc = s.body["documents"][0]["id"].as_str().unwrap().to_owned();
    assert!(doc.starts_with("kyd_"));

    // At rest: a ciphertext, no plaintext (raw or base64) anywhere in the table.
    let stored = app
        .core
        .store
        .get_kyc_document(&kasho::ids::TenantId::parse(&t.id).unwrap(), &doc)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.content.starts_with("kx1."), "sealed");
    let b64_marker = b64(marker.as_bytes());
    for needle in [marker.to_owned(), b64(&image), b64_marker[..12].to_owned()] {
        assert_eq!(
            app.raw_sql(&format!(
                "UPDATE kyc_documents SET content = content WHERE content LIKE '%{needle}%'"
            ))
            .await,
            0,
            "{needle} found at rest"
        );
    }
    // Metadata cannot be rewritten; documents cannot be deleted.
    assert!(
        app.try_raw_sql("UPDATE kyc_documents SET document_type = 'selfie'")
            .await
            .is_err()
    );
    assert!(app.try_raw_sql("DELETE FROM kyc_documents").await.is_err());

    // Download: byte-identical, with its type, audited as a PII read; officers only.
    let dl = |token: String| {
        let uri = format!("/v1/kyc/documents/{doc}/content");
        let router = app.router.clone();
        async move {
            let req = Request::builder()
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let ct = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, ct, bytes.to_vec())
        }
    };
    let (status, ct, bytes) = dl(co.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some("image/png"));
    assert_eq!(bytes, image, "byte-identical");
    for token in [m.clone(), app.user_token(&t, &["AUDITOR"]).await.1] {
        assert_eq!(dl(token).await.0, StatusCode::FORBIDDEN);
    }
    let second = dl(co.clone()).await;
    assert_eq!(second.2, image);
    let reads = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.action == "kyc.document.read" && e.outcome == "success")
        .count();
    assert_eq!(reads, 2, "every download is audited");
    let nope = app
        .get(
            "/v1/kyc/documents/kyd_0000000000000000000000000000000a/content",
            &co,
        )
        .await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND);

    // Tampering: the content of one document copied onto another does not open.
    let s2 = app
        .post(
            &path.replace(&cus, &customer(app, &t, false).await.0),
            Some(&m),
            submission(1, &[("passport", "image/png", &png("second"))]),
        )
        .await;
    assert_eq!(s2.status, StatusCode::CREATED, "{s2:?}");
    let doc2 = s2.body["documents"][0]["id"].as_str().unwrap().to_owned();
    app.raw_sql(&format!(
        "UPDATE kyc_documents SET content = (SELECT content FROM kyc_documents WHERE id = '{doc}') WHERE id = '{doc2}'"
    ))
    .await;
    let moved = app
        .get(&format!("/v1/kyc/documents/{doc2}/content"), &co)
        .await;
    assert_ne!(
        moved.status,
        StatusCode::OK,
        "a moved ciphertext does not open"
    );
}

async fn an_erased_customer_cannot_submit(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (cus, _, _) = customer(app, &t, false).await;
    app.raw_sql(&format!(
        "UPDATE customers SET status = 'erased' WHERE id = '{cus}'"
    ))
    .await;
    let r = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&t.manager_token),
            submission(1, &[("passport", "application/pdf", &pdf("p"))]),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "customer_erased")
    );
    let missing = app
        .post(
            "/v1/customers/cus_0000000000000000000000000000000a/kyc/submissions",
            Some(&t.manager_token),
            submission(1, &[("passport", "application/pdf", &pdf("p"))]),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

async fn documents_follow_key_rotation_and_are_shredded_with_the_customer_key(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let (cus, _, _) = customer(app, &t, false).await;
    let file = pdf("rotate-me");
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let s = app
        .post(
            &format!("/v1/customers/{cus}/kyc/submissions"),
            Some(&cashier),
            submission(1, &[("national_id", "application/pdf", &file)]),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    let doc = s.body["documents"][0]["id"].as_str().unwrap().to_owned();
    let stored = |app: &TestApp| {
        let tenant = tenant.clone();
        let doc = doc.clone();
        let store = app.core.store.clone();
        async move {
            store
                .get_kyc_document(&tenant, &doc)
                .await
                .unwrap()
                .unwrap()
                .content
        }
    };
    let before = stored(app).await;
    // Rotate the customer's data key and re-encrypt: the column is registered for rotation.
    let owner = kasho::service::keys::KeyOwner::Customer(cus.clone());
    app.core
        .keyring
        .rotate_data_key(&tenant, &owner)
        .await
        .unwrap();
    assert!(app.core.keyring.run_pending().await.unwrap() >= 1);
    let after = stored(app).await;
    assert_ne!(before, after, "re-encrypted under the new version");
    let co = officer(app, &t).await;
    let dl = app
        .request(
            Method::GET,
            &format!("/v1/kyc/documents/{doc}/content"),
            Some(&co),
            None,
        )
        .await;
    assert_eq!(dl.status, StatusCode::OK);
    assert_eq!(dl.body.as_str().map(str::as_bytes), Some(file.as_slice()));
    let sid = s.body["id"].as_str().unwrap();
    let rej = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/reject"),
            Some(&co),
            json!({ "reason": "details_mismatch" }),
        )
        .await;
    assert_eq!(rej.status, StatusCode::OK, "{rej:?}");
    // Destroying the customer's key (what erasure does) makes the documents unreadable.
    app.raw_sql(&format!(
        "UPDATE data_keys SET status = 'destroyed', wrapped = NULL WHERE owner = 'customer:{cus}'"
    ))
    .await;
    app.core.keyring.forget(&tenant, &owner);
    let gone = app
        .request(
            Method::GET,
            &format!("/v1/kyc/documents/{doc}/content"),
            Some(&co),
            None,
        )
        .await;
    assert_ne!(gone.status, StatusCode::OK, "{gone:?}");
    // The decision is kept, with its codes (no personal data in them).
    let h = app.get(&format!("/v1/customers/{cus}/kyc"), &co).await;
    assert_eq!(h.status, StatusCode::OK, "{h:?}");
    assert_eq!(h.body["history"][0]["status"], "rejected");
    assert_eq!(
        h.body["history"][0]["decision"]["reason_code"],
        "details_mismatch"
    );
}

async fn captures_are_checked_at_capture_time_and_holds_are_not(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    assert_eq!(
        put(app, "/v1/kyc/limits", &m, usd_limits()).await.status,
        StatusCode::OK
    );
    let (_, a, _) = customer(app, &t, false).await;
    let (_, b, _) = customer(app, &t, false).await;
    assert_eq!(
        deposit(app, &m, &a, 3_000).await.status,
        StatusCode::CREATED
    );
    // A hold moves no money: it is not checked.
    let h = app
        .post(
            "/v1/holds",
            Some(&m),
            json!({ "account_id": a, "credit_account_id": b, "currency": "USD", "amount": 1_200, "expires_in_seconds": 600 }),
        )
        .await;
    assert_eq!(h.status, StatusCode::CREATED, "{h:?}");
    let hold = h.body["id"].as_str().unwrap().to_owned();
    // Capturing it is an outgoing movement: over tier 0's single-transfer limit of 1,000.
    let c = app
        .post(&format!("/v1/holds/{hold}/capture"), Some(&m), json!({}))
        .await;
    assert_limit(&c, "max_single_transfer", "amount");
    let still = app.get(&format!("/v1/holds/{hold}"), &m).await;
    assert_eq!(still.body["status"], "active", "the hold stays: {still:?}");
    assert_eq!(balance(app, &m, &a).await, 3_000);
    // A smaller capture fits and counts towards the day.
    let c = app
        .post(
            &format!("/v1/holds/{hold}/capture"),
            Some(&m),
            json!({ "amount": 1_000 }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    assert_limit(
        &transfer(app, &m, &a, &b, 501).await,
        "daily_outgoing",
        "amount",
    );
    assert_eq!(
        transfer(app, &m, &a, &b, 500).await.status,
        StatusCode::CREATED
    );
}

backend_tests!(
    each_limit_refuses_with_its_name_and_resets_with_the_utc_day_and_month,
    unconfigured_currencies_are_free_configured_ones_fail_closed_and_reversals_pass,
    concurrent_transfers_cannot_both_pass_a_daily_limit,
    the_workflow_raises_a_tier_once_and_keeps_every_step,
    nobody_decides_their_own_submission,
    documents_are_checked_sealed_and_downloaded_intact,
    an_erased_customer_cannot_submit,
    documents_follow_key_rotation_and_are_shredded_with_the_customer_key,
    captures_are_checked_at_capture_time_and_holds_are_not,
);
