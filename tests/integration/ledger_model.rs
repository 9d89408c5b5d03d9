//! Property test of the ledger rules: random sequences of operations are applied through the
//! API and to a small in-memory model of the rules; every answer (posted, or refused with which
//! code) and every final balance must agree, and the double-entry invariant holds throughout.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestApp;

#[derive(Clone, Debug, Default)]
struct Acc {
    posted: i64,
    held: i64,
    frozen: bool,
    overdraft: i64,
}

impl Acc {
    /// The refusal code a debit of `amt` would get, if any.
    fn debit_refusal(&self, amt: i64) -> Option<&'static str> {
        if self.frozen {
            Some("account_frozen")
        } else if self.posted - self.held - amt < -self.overdraft {
            Some("insufficient_funds")
        } else {
            None
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn outcome(r: &crate::support::Resp) -> Option<String> {
    if r.status.is_success() {
        None
    } else {
        Some(r.code().to_owned())
    }
}

async fn random_operation_sequences_agree_with_the_model(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let n = 4;
    let mut ids = Vec::new();
    for _ in 0..n {
        let c = app.post("/v1/customers", Some(&m), json!({})).await;
        let a = app
            .post(
                "/v1/accounts",
                Some(&m),
                json!({ "customer_id": c.body["id"], "currency": "USD" }),
            )
            .await;
        ids.push(a.body["id"].as_str().unwrap().to_owned());
    }
    let mut model = vec![Acc::default(); n];
    let mut holds: Vec<(String, usize, i64, bool)> = Vec::new();
    let mut refusals = std::collections::HashMap::<&'static str, usize>::new();
    let mut rng =
        Rng(0x5eed_1234_abcd_0001 ^ u64::from(app.backend == crate::support::Backend::Postgres));

    for step in 0..150 {
        let a = rng.below(n as u64) as usize;
        let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
        let amt = 1 + rng.below(400) as i64;
        let op = rng.below(8);
        let (what, expected, got) = match op {
            0 | 1 => {
                let r = app
                    .post(
                        "/v1/deposits",
                        Some(&m),
                        json!({ "account_id": ids[a], "amount": amt * 2, "currency": "USD" }),
                    )
                    .await;
                model[a].posted += amt * 2;
                ("deposit", None, outcome(&r))
            }
            2 => {
                let r = app
                    .post(
                        "/v1/withdrawals",
                        Some(&m),
                        json!({ "account_id": ids[a], "amount": amt, "currency": "USD" }),
                    )
                    .await;
                let exp = model[a].debit_refusal(amt);
                if exp.is_none() {
                    model[a].posted -= amt;
                }
                ("withdrawal", exp, outcome(&r))
            }
            3 | 4 => {
                let r = app
                    .post("/v1/transfers", Some(&m), json!({ "amount": amt, "currency": "USD", "debit_account_id": ids[a], "credit_account_id": ids[b] }))
                    .await;
                let exp = model[a].debit_refusal(amt);
                if exp.is_none() {
                    model[a].posted -= amt;
                    model[b].posted += amt;
                }
                ("transfer", exp, outcome(&r))
            }
            5 => {
                let freeze = !model[a].frozen && rng.below(3) == 0;
                let path = if freeze { "freeze" } else { "unfreeze" };
                let r = app
                    .post(
                        &format!("/v1/accounts/{}/{path}", ids[a]),
                        Some(&m),
                        json!({ "reason": "model" }),
                    )
                    .await;
                model[a].frozen = freeze;
                ("status", None, outcome(&r))
            }
            6 => {
                let lim = rng.below(300) as i64;
                let r = app
                    .request(
                        Method::PUT,
                        &format!("/v1/accounts/{}/overdraft", ids[a]),
                        Some(&m),
                        Some(json!({ "overdraft_limit": lim })),
                    )
                    .await;
                let exp =
                    (model[a].posted - model[a].held < -lim).then_some("overdraft_below_balance");
                if exp.is_none() {
                    model[a].overdraft = lim;
                }
                ("overdraft", exp, outcome(&r))
            }
            _ => {
                let active: Vec<usize> = (0..holds.len()).filter(|i| holds[*i].3).collect();
                if !active.is_empty() && rng.below(2) == 0 {
                    let i = active[rng.below(active.len() as u64) as usize];
                    let r = app
                        .post(
                            &format!("/v1/holds/{}/void", holds[i].0),
                            Some(&m),
                            json!({}),
                        )
                        .await;
                    model[holds[i].1].held -= holds[i].2;
                    holds[i].3 = false;
                    ("void", None, outcome(&r))
                } else {
                    let r = app
                        .post("/v1/holds", Some(&m), json!({ "account_id": ids[a], "amount": amt, "currency": "USD", "expires_in_seconds": 3600 }))
                        .await;
                    let exp = model[a].debit_refusal(amt);
                    if exp.is_none() {
                        model[a].held += amt;
                        holds.push((
                            r.body["id"].as_str().unwrap_or_default().to_owned(),
                            a,
                            amt,
                            true,
                        ));
                    }
                    ("hold", exp, outcome(&r))
                }
            }
        };
        if let Some(code) = expected {
            *refusals.entry(code).or_default() += 1;
        }
        assert_eq!(
            got.as_deref(),
            expected,
            "step {step}: {what} on account {a} (model {:?})",
            model[a]
        );
    }
    // The sequence exercised the refusal paths, not only the happy one.
    assert!(
        refusals.get("insufficient_funds").copied().unwrap_or(0) > 0,
        "{refusals:?}"
    );
    assert!(
        refusals.get("account_frozen").copied().unwrap_or(0) > 0,
        "{refusals:?}"
    );
    for (i, id) in ids.iter().enumerate() {
        let acc = app.get(&format!("/v1/accounts/{id}"), &m).await;
        assert_eq!(acc.status, StatusCode::OK);
        assert_eq!(acc.body["posted_balance"], model[i].posted, "account {i}");
        assert_eq!(
            acc.body["available_balance"],
            model[i].posted - model[i].held,
            "account {i}"
        );
    }
    let sums = app
        .core
        .store
        .balance_sums(&kasho::ids::TenantId::parse(&t.id).unwrap())
        .await
        .unwrap();
    assert!(sums.iter().all(|(_, s)| *s == 0), "{sums:?}");
}

backend_tests!(random_operation_sequences_agree_with_the_model);
