//! Property test of the ledger rules: random sequences of operations are applied through the
//! API and to a small in-memory model of the rules; every answer (posted, or refused with which
//! code) and every final balance must agree, and the double-entry invariant holds throughout.
//! Operations: deposits, withdrawals, transfers with one or two credit legs, freezes, overdrafts,
//! holds (with or without a destination), voids, captures, and reversals (all that is left, an
//! amount, or one named leg).

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::support::TestApp;

#[derive(Clone, Debug, Default)]
struct Acc {
    posted: i64,
    held: i64,
    /// Pending credits: active holds destined for this account.
    incoming: i64,
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

/// A hold as the model sees it.
struct Hold {
    id: String,
    acc: usize,
    amt: i64,
    dest: Option<usize>,
    active: bool,
}

/// A posted transfer, with what each credit leg has given back through reversals.
struct Posted {
    id: String,
    debit: usize,
    legs: Vec<(usize, i64)>,
    reversed: Vec<i64>,
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
    let mut holds: Vec<Hold> = Vec::new();
    let mut transfers: Vec<Posted> = Vec::new();
    let mut refusals = std::collections::HashMap::<&'static str, usize>::new();
    let mut posted = std::collections::HashMap::<&'static str, usize>::new();
    let mut rng =
        Rng(0x5eed_1234_abcd_0001 ^ u64::from(app.backend == crate::support::Backend::Postgres));

    for step in 0..240 {
        let a = rng.below(n as u64) as usize;
        let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
        let amt = 1 + rng.below(400) as i64;
        let op = rng.below(12);
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
                    transfers.push(Posted {
                        id: r.body["id"].as_str().unwrap_or_default().to_owned(),
                        debit: a,
                        legs: vec![(b, amt)],
                        reversed: vec![0],
                    });
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
                        json!({ "reason": if freeze { "dispute" } else { "review_completed" } }),
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
            7 => {
                let active: Vec<usize> = (0..holds.len()).filter(|i| holds[*i].active).collect();
                if !active.is_empty() && rng.below(2) == 0 {
                    let i = active[rng.below(active.len() as u64) as usize];
                    let r = app
                        .post(
                            &format!("/v1/holds/{}/void", holds[i].id),
                            Some(&m),
                            json!({}),
                        )
                        .await;
                    let h = &mut holds[i];
                    model[h.acc].held -= h.amt;
                    if let Some(d) = h.dest {
                        model[d].incoming -= h.amt;
                    }
                    h.active = false;
                    ("void", None, outcome(&r))
                } else {
                    // Half the holds name a destination, shown there as pending credits.
                    let dest = (rng.below(2) == 0).then_some(b);
                    let mut body = json!({ "account_id": ids[a], "amount": amt, "currency": "USD", "expires_in_seconds": 3600 });
                    if let Some(d) = dest {
                        body["credit_account_id"] = json!(ids[d]);
                    }
                    let r = app.post("/v1/holds", Some(&m), body).await;
                    let exp = model[a].debit_refusal(amt);
                    if exp.is_none() {
                        model[a].held += amt;
                        if let Some(d) = dest {
                            model[d].incoming += amt;
                        }
                        holds.push(Hold {
                            id: r.body["id"].as_str().unwrap_or_default().to_owned(),
                            acc: a,
                            amt,
                            dest,
                            active: true,
                        });
                    }
                    ("hold", exp, outcome(&r))
                }
            }
            8 => {
                // Two credit legs, all or nothing.
                let others: Vec<usize> = (0..n).filter(|x| *x != a && *x != b).collect();
                let c = others[rng.below(others.len() as u64) as usize];
                let (x, y) = (amt, 1 + rng.below(200) as i64);
                let r = app
                    .post("/v1/transfers", Some(&m), json!({ "amount": x + y, "currency": "USD", "debit_account_id": ids[a],
                        "credits": [{ "account_id": ids[b], "amount": x }, { "account_id": ids[c], "amount": y }] }))
                    .await;
                let exp = model[a].debit_refusal(x + y);
                if exp.is_none() {
                    model[a].posted -= x + y;
                    model[b].posted += x;
                    model[c].posted += y;
                    transfers.push(Posted {
                        id: r.body["id"].as_str().unwrap_or_default().to_owned(),
                        debit: a,
                        legs: vec![(b, x), (c, y)],
                        reversed: vec![0, 0],
                    });
                }
                ("multi-leg transfer", exp, outcome(&r))
            }
            9 if !transfers.is_empty() => {
                // Reverse everything left, an amount (one leg), or one named leg (several).
                let k = rng.below(transfers.len() as u64) as usize;
                let tr = &transfers[k];
                let left: Vec<i64> = tr
                    .legs
                    .iter()
                    .zip(&tr.reversed)
                    .map(|((_, l), r)| l - r)
                    .collect();
                let partial = rng.below(2) == 0;
                let (body, wanted): (serde_json::Value, Vec<i64>) = if !partial {
                    (json!({}), left.clone())
                } else {
                    let x = 1 + rng.below(tr.legs[0].1 as u64) as i64;
                    let mut w = vec![0; tr.legs.len()];
                    w[0] = x;
                    if tr.legs.len() == 1 {
                        (json!({ "amount": x }), w)
                    } else {
                        (
                            json!({ "legs": [{ "account_id": ids[tr.legs[0].0], "amount": x }] }),
                            w,
                        )
                    }
                };
                let r = app
                    .post(&format!("/v1/transfers/{}/reverse", tr.id), Some(&m), body)
                    .await;
                let total: i64 = wanted.iter().sum();
                let exp = if left.iter().sum::<i64>() == 0
                    || wanted.iter().zip(&left).any(|(w, l)| w > l)
                {
                    Some("reversal_exceeds_original")
                } else {
                    tr.legs
                        .iter()
                        .zip(&wanted)
                        .filter(|(_, w)| **w > 0)
                        .find_map(|((acc, _), w)| model[*acc].debit_refusal(*w))
                };
                if exp.is_none() {
                    let tr = &mut transfers[k];
                    for (i, w) in wanted.iter().enumerate() {
                        model[tr.legs[i].0].posted -= w;
                        tr.reversed[i] += w;
                    }
                    model[tr.debit].posted += total;
                }
                ("reversal", exp, outcome(&r))
            }
            _ => {
                // Capture a hold that names its destination, sometimes for more than it holds.
                let with_dest: Vec<usize> = (0..holds.len())
                    .filter(|i| holds[*i].active && holds[*i].dest.is_some())
                    .collect();
                if with_dest.is_empty() {
                    let r = app
                        .post(
                            "/v1/deposits",
                            Some(&m),
                            json!({ "account_id": ids[a], "amount": amt, "currency": "USD" }),
                        )
                        .await;
                    model[a].posted += amt;
                    ("deposit", None, outcome(&r))
                } else {
                    let i = with_dest[rng.below(with_dest.len() as u64) as usize];
                    let (acc, amt_held, dest) =
                        (holds[i].acc, holds[i].amt, holds[i].dest.unwrap_or(0));
                    let take = 1 + rng.below(amt_held as u64 + 50) as i64;
                    let r = app
                        .post(
                            &format!("/v1/holds/{}/capture", holds[i].id),
                            Some(&m),
                            json!({ "amount": take }),
                        )
                        .await;
                    let mut released = model[acc].clone();
                    released.held -= amt_held;
                    let exp = if take > amt_held {
                        Some("capture_exceeds_hold")
                    } else {
                        released.debit_refusal(take)
                    };
                    if exp.is_none() {
                        model[acc].held -= amt_held;
                        model[acc].posted -= take;
                        model[dest].incoming -= amt_held;
                        model[dest].posted += take;
                        holds[i].active = false;
                    }
                    ("capture", exp, outcome(&r))
                }
            }
        };
        match expected {
            Some(code) => *refusals.entry(code).or_default() += 1,
            None => *posted.entry(what).or_default() += 1,
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
    for what in ["multi-leg transfer", "reversal", "capture", "hold", "void"] {
        assert!(
            posted.get(what).copied().unwrap_or(0) > 0,
            "{what}: {posted:?}"
        );
    }
    for code in ["reversal_exceeds_original", "capture_exceeds_hold"] {
        assert!(
            refusals.get(code).copied().unwrap_or(0) > 0,
            "{code}: {refusals:?}"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let acc = app.get(&format!("/v1/accounts/{id}"), &m).await;
        assert_eq!(acc.status, StatusCode::OK);
        assert_eq!(acc.body["posted_balance"], model[i].posted, "account {i}");
        assert_eq!(
            acc.body["available_balance"],
            model[i].posted - model[i].held,
            "account {i}"
        );
        assert_eq!(
            acc.body["pending_credits"], model[i].incoming,
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
