//! Issue 14 items 3 and 4: exact-match search cannot unmask (phone and national-id searches need
//! `customers:read_pii`; every search by a personal-data value is audited; searches are
//! budgeted per credential), and authorisation is re-checked at commit (an actor demoted,
//! disabled or signed out after its request was authorised changes nothing and moves no money,
//! on either backend and across two instances).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Request, StatusCode};
use kasho::domain::ledger::{CheckContext, PreCommitCheck, Verdict};
use kasho::service::RequestMeta;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Backend, Resp, TenantFixture, TestApp, customer_account, send_to};

// ---------------------------------------------------------------- helpers

fn profile(n: u32) -> Value {
    json!({
        "first_name": "Ada",
        "last_name": "Obi",
        "email": format!("ada.obi{n}@example.com"),
        "phone": format!("+234 803 555 {:04}", 9100 + n),
        "national_ids": [{ "type": "BVN", "number": format!("223344{:05}", n) }]
    })
}

async fn new_customer(app: &TestApp, t: &TenantFixture, n: u32) -> String {
    let r = app
        .post("/v1/customers", Some(&t.manager_token), profile(n))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.body["id"].as_str().unwrap().to_owned()
}

fn ids(r: &Resp) -> Vec<String> {
    r.body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The project's error shape, with `code`.
fn assert_error(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.code(), code, "{r:?}");
    let e = &r.body["error"];
    assert!(e["type"].is_string() && e["message"].is_string(), "{r:?}");
    assert!(
        e["request_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("req_")),
        "{r:?}"
    );
}

fn post_with_key(path: &str, token: &str, key: &str, body: &Value) -> Request<axum::body::Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .header("idempotency-key", key)
        .body(axum::body::Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn put_roles(user: &str, token: &str, roles: &[&str]) -> Request<axum::body::Body> {
    Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/users/{user}/roles"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::from(
            serde_json::to_vec(&json!({ "roles": roles })).unwrap(),
        ))
        .unwrap()
}

async fn count(app: &TestApp, sql: &str) -> usize {
    app.raw_strings(sql).await.len()
}

// ---------------------------------------------------------------- item 3: search

async fn searching_by_phone_or_national_id_needs_read_pii_and_every_search_is_audited(
    app: &TestApp,
) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let id = new_customer(app, &t, 1).await;
    let (_, agent) = app.user_token(&t, &["AGENT"]).await;

    // The agent sees the phone masked; it may not try numbers to find the rest of it.
    let seen = app.get(&format!("/v1/customers/{id}"), &agent).await;
    assert_eq!(seen.status, StatusCode::OK, "{seen:?}");
    assert_ne!(seen.body["phone"], "+2348035559101", "{seen:?}");
    for q in [
        "phone=%2B2348035559101",
        "phone=%2B2348035559100",
        "national_id_type=BVN&national_id=22334400001",
    ] {
        let r = app.get(&format!("/v1/customers?{q}"), &agent).await;
        assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
        assert!(!r.body.to_string().contains("9101"), "{r:?}");
    }
    // A malformed value is still 400 first (and never echoed).
    let r = app.get("/v1/customers?phone=0803555", &agent).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "parameter_invalid");
    // By email it may search (within its budget), and finds the customer masked.
    let r = app
        .get("/v1/customers?email=ada.obi1%40example.com", &agent)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(ids(&r), vec![id.clone()]);
    // A holder of customers:read_pii searches by phone and national id.
    let m = &t.manager_token;
    let r = app.get("/v1/customers?phone=%2B2348035559101", m).await;
    assert_eq!(ids(&r), vec![id.clone()], "{r:?}");
    let r = app
        .get(
            "/v1/customers?national_id_type=BVN&national_id=22334400002",
            m,
        )
        .await;
    assert!(ids(&r).is_empty(), "{r:?}");

    // Every search by a personal-data value is a read of personal data in the audit trail:
    // who, which field, what matched; never the value.
    let chain = app.audit_chain(&t.id).await;
    let reads: Vec<_> = chain
        .iter()
        .filter(|e| e.action == "customer.pii.read")
        .collect();
    let denied: Vec<_> = reads.iter().filter(|e| e.outcome == "denied").collect();
    assert_eq!(denied.len(), 3, "{reads:?}");
    assert!(denied.iter().all(|e| {
        e.security_event.as_deref() == Some("authorization_refused")
            && e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("search:") && r.ends_with("customers:read_pii"))
    }));
    let searches: Vec<_> = reads
        .iter()
        .filter(|e| e.outcome == "success")
        .filter(|e| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("search:"))
        })
        .collect();
    assert_eq!(searches.len(), 3, "{reads:?}");
    assert!(searches.iter().any(|e| {
        e.reason.as_deref() == Some("search:email;matches=1")
            && e.target_id.as_deref() == Some(id.as_str())
            && e.actor_id.as_deref() != Some(t.manager_id.as_str())
    }));
    assert!(
        searches
            .iter()
            .any(|e| e.reason.as_deref() == Some("search:phone;matches=1"))
    );
    assert!(
        searches
            .iter()
            .any(|e| e.reason.as_deref() == Some("search:national_id:BVN;matches=0"))
    );
    let all = format!("{chain:?}");
    for value in ["ada.obi1", "5559101", "22334400001", "22334400002"] {
        assert!(!all.contains(value), "{value} in the audit trail");
    }
}

async fn searches_by_personal_data_are_budgeted_per_credential(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    new_customer(app, &t, 1).await;
    let (_, agent) = app.user_token(&t, &["AGENT"]).await;
    let (_, other_agent) = app.user_token(&t, &["AGENT"]).await;
    let search = |token: String, n: u32| async move {
        app.get(
            &format!("/v1/customers?email=guess{n}%40example.com"),
            &token,
        )
        .await
    };
    // The default budget: 100 searches an hour for a credential without read_pii.
    for n in 0..100 {
        let r = search(agent.clone(), n).await;
        assert_eq!(r.status, StatusCode::OK, "search {n}: {r:?}");
    }
    let r = search(agent.clone(), 100).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "search_budget_exhausted");
    let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    // The count is shared: another instance refuses the same credential.
    let other = app.second_instance().await;
    let req = Request::builder()
        .uri("/v1/customers?email=guess101%40example.com")
        .header("authorization", format!("Bearer {agent}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let r = send_to(&other, req).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "search_budget_exhausted");
    // Other credentials keep theirs; a holder of read_pii has none.
    assert_eq!(search(other_agent, 0).await.status, StatusCode::OK);
    for n in 0..3 {
        assert_eq!(
            search(t.manager_token.clone(), n).await.status,
            StatusCode::OK
        );
    }
    // Listing without a search criterion is not a search.
    assert_eq!(
        app.get("/v1/customers", &agent).await.status,
        StatusCode::OK
    );
    // Spending the budget is one security event.
    let events: Vec<_> = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| e.security_event.as_deref() == Some("search_budget_exhausted"))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    // The next window gives the budget back (signing in again does not).
    app.clock.advance_seconds(3600);
    let email = app
        .raw_strings(&format!(
            "SELECT email FROM users WHERE tenant_id = '{}' AND roles = 'AGENT' ORDER BY id LIMIT 1",
            t.id
        ))
        .await
        .remove(0);
    let again = app.token(Some(&t.slug), &email).await;
    assert_eq!(search(again, 0).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------- item 4: the gap hook

/// A pre-commit check that, for one chosen actor, holds its movement after the request was
/// authorised and has done every read (the check point sits just before the ledger writer) and
/// before the posting transaction, until the test lets it go: the window in which the review
/// demoted managers whose deposits then committed.
#[derive(Default)]
struct Gap(Mutex<Option<Armed>>);

struct Armed {
    initiator: String,
    reached: tokio::sync::oneshot::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

impl PreCommitCheck for Gap {
    fn name(&self) -> &'static str {
        "test-gap"
    }

    fn check(&self, _ctx: &CheckContext<'_>) -> Verdict {
        Verdict::allow()
    }

    /// The gap: after authorisation, before the writer's queue (and so before the posting
    /// transaction).
    fn stage(&self, m: &kasho::store::TransferCommand) {
        let armed = {
            let mut slot = self.0.lock().unwrap();
            if slot.as_ref().is_some_and(|a| a.initiator == m.created_by) {
                slot.take()
            } else {
                None
            }
        };
        if let Some(a) = armed {
            let _ = a.reached.send(());
            tokio::task::block_in_place(|| {
                let _ = a.go.recv_timeout(Duration::from_secs(30));
            });
        }
    }
}

impl Gap {
    /// Sends `req` (a movement by `user`) to `app`; when it reaches the gap, runs `meanwhile`,
    /// then lets it go; returns its answer.
    async fn around<F: std::future::Future<Output = ()>>(
        &self,
        app: &TestApp,
        user: &str,
        req: Request<axum::body::Body>,
        meanwhile: F,
    ) -> Resp {
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        *self.0.lock().unwrap() = Some(Armed {
            initiator: user.to_owned(),
            reached: reached_tx,
            go: go_rx,
        });
        let router = app.router.clone();
        let answer = tokio::spawn(async move { send_to(&router, req).await });
        tokio::time::timeout(Duration::from_secs(30), reached)
            .await
            .expect("the movement reached the gap")
            .expect("gap");
        meanwhile.await;
        go.send(()).unwrap();
        answer.await.unwrap()
    }
}

/// A new CASHIER of `t` and the secret of an API token (`cash:write`) it created.
async fn cashier_with_till_token(app: &TestApp, t: &TenantFixture, name: &str) -> (String, String) {
    let (id, token) = app.user_token(t, &["CASHIER"]).await;
    let tok = app
        .post(
            "/v1/api-tokens",
            Some(&token),
            json!({ "name": name, "scopes": ["cash:write"], "expires_in": "30d" }),
        )
        .await;
    assert_eq!(tok.status, StatusCode::CREATED, "{tok:?}");
    (id, tok.body["secret"].as_str().unwrap().to_owned())
}

async fn a_movement_whose_actor_lost_the_right_before_the_commit_moves_nothing(backend: Backend) {
    let gap = Arc::new(Gap::default());
    let app = TestApp::with_checks(backend, vec![gap.clone()]).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let other = app.second_instance().await;
    let a = customer_account(&app, &t, "USD").await;
    let b = customer_account(&app, &t, "USD").await;
    let seed = app
        .post(
            "/v1/deposits",
            Some(&t.manager_token),
            json!({ "account_id": a, "amount": 10_000, "currency": "USD" }),
        )
        .await;
    assert_eq!(seed.status, StatusCode::CREATED, "{seed:?}");
    let deposit =
        |to: &str, amount: i64| json!({ "account_id": to, "amount": amount, "currency": "USD" });

    // 1. A MANAGER demoted (on another instance) while its deposit is in flight.
    let (m2, m2_token) = app.user_token(&t, &["MANAGER"]).await;
    let r = gap
        .around(
            &app,
            &m2,
            post_with_key("/v1/deposits", &m2_token, "gap-1", &deposit(&b, 500)),
            async {
                let r = send_to(&other, put_roles(&m2, &t.manager_token, &["AUDITOR"])).await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
            },
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");

    // 2. A CASHIER disabled while its transfer is in flight.
    let (c1, c1_token) = app.user_token(&t, &["CASHIER"]).await;
    let transfer =
        json!({ "amount": 700, "currency": "USD", "debit_account_id": a, "credit_account_id": b });
    let r = gap
        .around(
            &app,
            &c1,
            post_with_key("/v1/transfers", &c1_token, "gap-2", &transfer),
            async {
                let r = send_to(
                    &other,
                    TestApp::post_request(
                        &format!("/v1/users/{c1}/disable"),
                        Some(&t.manager_token),
                        &json!({}),
                    ),
                )
                .await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
            },
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");

    // 3. A CASHIER whose session signed out (on another instance) while its withdrawal is in
    //    flight.
    let (c2, c2_token) = app.user_token(&t, &["CASHIER"]).await;
    let r = gap
        .around(
            &app,
            &c2,
            post_with_key("/v1/withdrawals", &c2_token, "gap-3", &deposit(&a, 300)),
            async {
                let r = send_to(
                    &other,
                    TestApp::post_request("/v1/auth/logout", Some(&c2_token), &json!({})),
                )
                .await;
                assert!(r.status.is_success(), "{r:?}");
            },
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");

    // 4. An API token whose creator lost the role that let it deposit: 403, as the middleware
    //    would answer the next request (a role change ends sessions, not tokens).
    let (c3, secret) = cashier_with_till_token(&app, &t, "till").await;
    let r = gap
        .around(
            &app,
            &c3,
            post_with_key("/v1/deposits", &secret, "gap-4", &deposit(&b, 900)),
            async {
                let r = send_to(&other, put_roles(&c3, &t.manager_token, &["AGENT"])).await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
            },
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");

    // Nothing was written for any of them: no transfer, no idempotency key, balances as seeded.
    for user in [&m2, &c1, &c2, &c3] {
        assert_eq!(
            count(
                &app,
                &format!("SELECT id FROM transfers WHERE created_by = '{user}'")
            )
            .await,
            0,
            "{user}"
        );
    }
    assert_eq!(
        count(
            &app,
            "SELECT idem_key FROM idempotency_keys WHERE idem_key LIKE 'gap-%'"
        )
        .await,
        0
    );
    for (acc, posted) in [(&a, 10_000), (&b, 0)] {
        let r = app
            .get(&format!("/v1/accounts/{acc}"), &t.manager_token)
            .await;
        assert_eq!(r.body["posted_balance"], posted, "{r:?}");
    }
    // Each refusal is an authorisation refusal in the audit trail.
    let refused = app
        .audit_chain(&t.id)
        .await
        .into_iter()
        .filter(|e| {
            e.outcome == "denied"
                && e.security_event.as_deref() == Some("authorization_refused")
                && e.action.ends_with(".create")
        })
        .count();
    assert!(refused >= 4, "{refused}");

    // Without a change in the gap, the same movement goes through.
    let (c4, c4_token) = app.user_token(&t, &["CASHIER"]).await;
    let r = gap
        .around(
            &app,
            &c4,
            post_with_key("/v1/deposits", &c4_token, "gap-5", &deposit(&b, 100)),
            async {},
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");

    // 5. The tenant suspended (by a platform admin, on another instance) while an API token's
    //    deposit is in flight: 403 `tenant_suspended`, as sign-in answers; nothing posted.
    //    (Suspension ends sessions, so only a token could still be in flight.)
    let (c5, secret) = cashier_with_till_token(&app, &t, "till-5").await;
    let r = gap
        .around(
            &app,
            &c5,
            post_with_key("/v1/deposits", &secret, "gap-6", &deposit(&b, 300)),
            async {
                let r = send_to(
                    &other,
                    TestApp::post_request(
                        &format!("/v1/tenants/{}/suspend", t.id),
                        Some(&admin),
                        &json!({}),
                    ),
                )
                .await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
            },
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "tenant_suspended");
    assert_eq!(
        count(
            &app,
            &format!("SELECT id FROM transfers WHERE created_by = '{c5}'")
        )
        .await,
        0
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_before_commit_sqlite() {
    a_movement_whose_actor_lost_the_right_before_the_commit_moves_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_before_commit_postgres() {
    a_movement_whose_actor_lost_the_right_before_the_commit_moves_nothing(Backend::Postgres).await;
}

// ---------------------------------------------------------------- item 4: batches

/// A deposit by `actor` as the ledger writer receives it.
fn movement(
    tenant: &kasho::ids::TenantId,
    settlement: &str,
    to: &str,
    amount: i64,
    actor: &kasho::service::Principal,
    now: kasho::clock::Timestamp,
) -> kasho::store::TransferCommand {
    let id = kasho::ids::TransferId::generate();
    kasho::store::TransferCommand {
        id: id.clone(),
        tenant_id: tenant.clone(),
        kind: kasho::domain::ledger::TransferKind::Deposit,
        currency: kasho::domain::currency::Currency::parse("USD").unwrap(),
        amount: kasho::domain::ledger::Amount::parse(amount).unwrap(),
        debits: vec![(
            kasho::ids::AccountId::from_trusted(settlement.to_owned()),
            kasho::domain::ledger::Amount::parse(amount).unwrap(),
        )],
        debit_owner: None,
        credits: vec![(
            kasho::ids::AccountId::from_trusted(to.to_owned()),
            kasho::domain::ledger::Amount::parse(amount).unwrap(),
        )],
        reference: None,
        details: None,
        details_clear: None,
        created_by: actor.user_id.to_string(),
        created_at: now,
        audit: kasho::domain::audit::NewAuditEvent {
            tenant_id: Some(tenant.clone()),
            occurred_at: now,
            actor_type: kasho::domain::audit::ActorType::User,
            actor_id: Some(actor.user_id.to_string()),
            action: "deposit.create".into(),
            target_type: Some("transfer".into()),
            target_id: Some(id.to_string()),
            outcome: kasho::domain::audit::Outcome::Success,
            reason: None,
            ip: None,
            request_id: None,
            security_event: None,
        },
        idempotency: None,
        reverses: None,
        capture_hold: None,
        quiet_refusal: false,
        actor: Some(actor.actor_check()),
        kyc: None,
        subject: None,
    }
}

async fn in_one_batch_a_revoked_actors_movements_are_refused_and_the_others_commit(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let acc = customer_account(app, &t, "USD").await;
    let settlement = app
        .core
        .store
        .system_account(&tenant, "settlement", "USD")
        .await
        .unwrap()
        .unwrap()
        .id;
    let meta = &RequestMeta::default();
    let (_, kept) = app.user_token(&t, &["CASHIER"]).await;
    let (_, out) = app.user_token(&t, &["CASHIER"]).await;
    let (demoted_id, demoted) = app.user_token(&t, &["CASHIER"]).await;
    let auth = |token: String| async move {
        kasho::service::auth::authenticate(&app.core, meta, &token)
            .await
            .unwrap()
    };
    let (kept, out_p, demoted_p) = (
        auth(kept).await,
        auth(out.clone()).await,
        auth(demoted).await,
    );
    // After the three requests were authorised: one signs out, one is demoted.
    let r = app.post("/v1/auth/logout", Some(&out), json!({})).await;
    assert!(r.status.is_success(), "{r:?}");
    let r = app
        .send(put_roles(&demoted_id, &t.manager_token, &["AGENT"]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    let now = app.clock_now();
    let batch: Vec<kasho::domain::ledger::LedgerCommand> = vec![
        movement(&tenant, &settlement, &acc, 100, &out_p, now).into(),
        movement(&tenant, &settlement, &acc, 200, &kept, now).into(),
        movement(&tenant, &settlement, &acc, 400, &demoted_p, now).into(),
        movement(&tenant, &settlement, &acc, 800, &kept, now).into(),
    ];
    let (_, results) = app
        .core
        .store
        .ledger()
        .post(&batch, false, &kasho::domain::ledger::Checks::default())
        .await
        .unwrap();
    use kasho::domain::authz::ActorRevoked;
    use kasho::domain::ledger::Refusal;
    use kasho::store::PostResult;
    assert!(
        matches!(
            results[0],
            PostResult::Refused(Refusal::ActorRevoked(ActorRevoked::CredentialEnded))
        ),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], PostResult::Posted(_)),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(
            results[2],
            PostResult::Refused(Refusal::ActorRevoked(ActorRevoked::CredentialEnded))
        ),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], PostResult::Posted(_)),
        "{:?}",
        results[3]
    );
    let r = app
        .get(&format!("/v1/accounts/{acc}"), &t.manager_token)
        .await;
    assert_eq!(r.body["posted_balance"], 1_000, "{r:?}");
    // A hold is a movement too: one placed by a signed-out actor reserves nothing.
    let usd = kasho::domain::currency::Currency::parse("USD").unwrap();
    let fifty = kasho::domain::ledger::Amount::parse(50).unwrap();
    let hold = kasho::domain::ledger::HoldCommand {
        id: kasho::ids::HoldId::generate(),
        tenant_id: tenant.clone(),
        account_id: kasho::ids::AccountId::from_trusted(acc.clone()),
        owner: None,
        credit_account_id: None,
        currency: usd,
        amount: fifty,
        expires_at: now.plus_seconds(3600),
        reference: None,
        created_by: out_p.user_id.to_string(),
        created_at: now,
        audit: movement(&tenant, &settlement, &acc, 50, &out_p, now).audit,
        idempotency: None,
        actor: Some(out_p.actor_check()),
    };
    let (_, results) = app
        .core
        .store
        .ledger()
        .post(
            &[kasho::domain::ledger::LedgerCommand::PlaceHold(hold)],
            false,
            &kasho::domain::ledger::Checks::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            results[0],
            PostResult::Refused(Refusal::ActorRevoked(ActorRevoked::CredentialEnded))
        ),
        "{:?}",
        results[0]
    );
    let r = app
        .get(&format!("/v1/accounts/{acc}"), &t.manager_token)
        .await;
    assert_eq!(r.body["pending_debits"], 0, "{r:?}");
}

// ---------------------------------------------------------------- item 4: access changes

async fn users_changing_each_other_on_two_instances_never_act_on_a_revoked_right(app: &TestApp) {
    let admin = app.platform_admin().await;
    let (other_core, other) = app.instance_with(&[]).await;
    let meta = RequestMeta::default();

    // Two managers disable (or demote) each other at once, each on its own instance: at most
    // one succeeds and the tenant keeps an active MANAGER.
    for round in 0..4 {
        let t = app.tenant(&admin, &format!("race{round}")).await;
        let (m2, m2_email) = app.user(&t, &["MANAGER"]).await;
        let m2_token = app.token(Some(&t.slug), &m2_email).await;
        let (a, b) = if round % 2 == 0 {
            (
                TestApp::post_request(
                    &format!("/v1/users/{m2}/disable"),
                    Some(&t.manager_token),
                    &json!({}),
                ),
                TestApp::post_request(
                    &format!("/v1/users/{}/disable", t.manager_id),
                    Some(&m2_token),
                    &json!({}),
                ),
            )
        } else {
            (
                put_roles(&m2, &t.manager_token, &["AUDITOR"]),
                put_roles(&t.manager_id, &m2_token, &["AUDITOR"]),
            )
        };
        let (ra, rb) = tokio::join!(send_to(&app.router, a), send_to(&other, b));
        let ok = [&ra, &rb]
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert!(ok <= 1, "round {round}: {ra:?} {rb:?}");
        let active = count(
            app,
            &format!(
                "SELECT id FROM users WHERE tenant_id = '{}' AND status = 'active' AND roles LIKE '%MANAGER%'",
                t.id
            ),
        )
        .await;
        assert!(active >= 1, "round {round}: {ra:?} {rb:?}");
    }

    // Three managers: B's request is authorised on instance 2 (its principal read), then A
    // disables B on instance 1. B's change reaches the store after that: it is refused, 401,
    // and A stays active, though a MANAGER would remain either way.
    let t = app.tenant(&admin, "trio").await;
    let (b, b_email) = app.user(&t, &["MANAGER"]).await;
    let (c, c_email) = app.user(&t, &["MANAGER"]).await;
    let b_token = app.token(Some(&t.slug), &b_email).await;
    let c_token = app.token(Some(&t.slug), &c_email).await;
    let pb = kasho::service::auth::authenticate(&other_core, &meta, &b_token)
        .await
        .unwrap();
    let pc = kasho::service::auth::authenticate(&other_core, &meta, &c_token)
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/v1/users/{b}/disable"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = kasho::service::users::set_disabled(&other_core, &meta, &pb, &t.manager_id, true).await;
    assert!(
        matches!(r, Err(kasho::error::AppError::InvalidToken(_))),
        "{r:?}"
    );
    // The same for a role change: C is demoted, then its stale request would demote A.
    let r = app
        .send(put_roles(&c, &t.manager_token, &["AUDITOR"]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = kasho::service::users::set_roles(
        &other_core,
        &meta,
        &pc,
        &t.manager_id,
        &["AUDITOR".to_owned()],
    )
    .await;
    assert!(
        matches!(r, Err(kasho::error::AppError::InvalidToken(_))),
        "{r:?}"
    );
    let a_now = app
        .raw_strings(&format!(
            "SELECT status || ' ' || roles FROM users WHERE id = '{}'",
            t.manager_id
        ))
        .await;
    assert_eq!(a_now, vec!["active MANAGER".to_owned()]);
    // Nor may C's stale requests invite, create an API token or reset a second factor.
    let r = kasho::service::users::create(
        &other_core,
        &meta,
        &pc,
        kasho::service::users::CreateUser {
            email: "late@trio.test".into(),
            roles: vec!["CASHIER".into()],
        },
    )
    .await;
    assert!(
        matches!(r, Err(kasho::error::AppError::InvalidToken(_))),
        "{r:?}"
    );
    assert_eq!(
        count(app, "SELECT id FROM users WHERE email = 'late@trio.test'").await,
        0
    );
    let r = kasho::service::api_tokens::create(
        &other_core,
        &meta,
        &pc,
        kasho::service::api_tokens::CreateInput {
            name: "late".into(),
            scopes: vec!["accounts:read".into()],
            expires_in: "30d".into(),
            allowed_ips: vec![],
        },
    )
    .await;
    assert!(
        matches!(r, Err(kasho::error::AppError::InvalidToken(_))),
        "{:?}",
        r.err()
    );
    assert_eq!(
        count(app, "SELECT id FROM api_tokens WHERE name = 'late'").await,
        0
    );
    let r = kasho::service::users::reset_mfa(&other_core, &meta, &pc, &b).await;
    assert!(
        matches!(r, Err(kasho::error::AppError::InvalidToken(_))),
        "{r:?}"
    );
}

backend_tests!(
    searching_by_phone_or_national_id_needs_read_pii_and_every_search_is_audited,
    searches_by_personal_data_are_budgeted_per_credential,
    in_one_batch_a_revoked_actors_movements_are_refused_and_the_others_commit,
    users_changing_each_other_on_two_instances_never_act_on_a_revoked_right,
);
