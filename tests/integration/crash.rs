//! Durability: the server is killed with SIGKILL in the middle of a burst of transfers,
//! restarted, and every unacknowledged request is retried with its idempotency key. Nothing
//! acknowledged is lost, nothing is posted twice, and every invariant holds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::backend_tests;
use crate::support::{PASSWORD, Served, TestApp, free_port, serve_command};

/// One HTTP/1.1 request on a fresh connection; `None` when the server is gone.
async fn post(
    addr: SocketAddr,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    let fut = async {
        let mut s = BufReader::new(TcpStream::connect(addr).await.ok()?);
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.get_mut().write_all(req.as_bytes()).await.ok()?;
        let mut line = String::new();
        s.read_line(&mut line).await.ok()?;
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut len = 0;
        loop {
            line.clear();
            s.read_line(&mut line).await.ok()?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().ok()?;
            }
        }
        let mut buf = vec![0; len];
        s.read_exact(&mut buf).await.ok()?;
        Some((status, serde_json::from_slice(&buf).ok()?))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()
        .flatten()
}

async fn start_server(app: &TestApp, port: u16) -> Served {
    let log = app.data_dir.path().join(format!("serve-{port}.log"));
    let mut cmd = serve_command(app.data_dir.path(), &app.database_url, port, &log);
    cmd.env("KASHO_LOG_LEVEL", "error")
        // Thousands of requests from one address and one token: not what this test is about.
        .envs(crate::support::generous_limits_env());
    Served::start(cmd, port, log).await
}

async fn killed_mid_burst_the_ledger_loses_nothing_and_posts_nothing_twice(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let mut accounts = Vec::new();
    for _ in 0..4 {
        let c = app.post("/v1/customers", Some(&m), json!({})).await;
        let a = app
            .post(
                "/v1/accounts",
                Some(&m),
                json!({ "customer_id": c.body["id"], "currency": "USD" }),
            )
            .await;
        let id = a.body["id"].as_str().unwrap().to_owned();
        app.post(
            "/v1/deposits",
            Some(&m),
            json!({ "account_id": id, "amount": 100_000, "currency": "USD" }),
        )
        .await;
        accounts.push(id);
    }
    let body_for = |c: usize, i: usize| {
        json!({ "amount": 1 + ((c * 31 + i * 7) % 50), "currency": "USD",
                "debit_account_id": accounts[(c + i) % 4], "credit_account_id": accounts[(c + i + 1) % 4] })
    };

    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = start_server(app, port).await;
    // key -> Some(transfer id) when acknowledged, None when the answer never came.
    let outcomes: Arc<Mutex<HashMap<String, Option<String>>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..16 {
        let (outcomes, m, bodies) = (
            outcomes.clone(),
            m.clone(),
            (0..200).map(|i| body_for(c, i)).collect::<Vec<_>>(),
        );
        clients.push(tokio::spawn(async move {
            for (i, body) in bodies.iter().enumerate() {
                let key = format!("crash-{c}-{i}");
                let r = post(addr, "/v1/transfers", &m, &key, body).await;
                let acked = match r {
                    Some((201, v)) => Some(v["id"].as_str().unwrap().to_owned()),
                    Some((s, v)) => panic!("unexpected {s}: {v}"),
                    None => None,
                };
                let gone = acked.is_none();
                outcomes.lock().await.insert(key, acked);
                if gone {
                    break;
                }
            }
        }));
    }
    // Kill once the burst is well under way (at least 40 acknowledged), however fast this
    // machine is.
    for _ in 0..400 {
        if outcomes
            .lock()
            .await
            .values()
            .filter(|v| v.is_some())
            .count()
            >= 40
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.kill(); // SIGKILL: no graceful shutdown
    for c in clients {
        c.await.unwrap();
    }
    let outcomes = outcomes.lock().await.clone();
    let acked: Vec<(&String, &String)> = outcomes
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|id| (k, id)))
        .collect();
    let unacked: Vec<&String> = outcomes
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k)
        .collect();
    assert!(
        !acked.is_empty(),
        "some transfers were acknowledged before the kill"
    );
    assert!(
        !unacked.is_empty(),
        "the kill interrupted requests in flight"
    );
    assert!(
        acked.len() < 16 * 200,
        "the burst was still running when the server died"
    );

    // The same request again: key `crash-<client>-<i>` and its body.
    let resend = |key: &str| {
        let parts: Vec<usize> = key
            .trim_start_matches("crash-")
            .split('-')
            .map(|p| p.parse().unwrap())
            .collect();
        let (m, body) = (m.clone(), body_for(parts[0], parts[1]));
        let key = key.to_owned();
        async move { post(addr, "/v1/transfers", &m, &key, &body).await }
    };

    // Restart and retry every unacknowledged request with its key and body.
    let mut server = start_server(app, port).await;
    let mut retried_ids = Vec::new();
    for key in &unacked {
        let (s, v) = resend(key).await.expect("server is back");
        assert_eq!(s, 201, "retry of {key}: {v}");
        retried_ids.push(v["id"].as_str().unwrap().to_owned());
    }
    // Replaying an acknowledged key returns the very same transfer.
    for (key, id) in acked.iter().take(20) {
        let (s, v) = resend(key).await.unwrap();
        assert_eq!((s, v["id"].as_str().unwrap()), (201, id.as_str()));
    }
    server.kill();

    // Every acknowledged transfer is durable and appears exactly once.
    let mut all: Vec<String> = acked.iter().map(|(_, id)| (*id).clone()).collect();
    all.extend(retried_ids);
    let unique: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no key posted twice");
    for id in &all {
        assert_eq!(
            app.get(&format!("/v1/transfers/{id}"), &m).await.status,
            axum::http::StatusCode::OK,
            "{id} lost"
        );
    }
    let tenant_id = kasho::ids::TenantId::parse(&t.id).unwrap();
    let page = kasho::store::Page {
        limit: 100_000,
        starting_after: None,
    };
    let filter = kasho::store::TransferFilter::default();
    let stored = app
        .core
        .store
        .list_transfers(&tenant_id, &filter, &page)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == "transfer")
        .count();
    assert_eq!(
        stored,
        all.len(),
        "the ledger holds exactly the acknowledged and retried transfers"
    );
    let sums = app.core.store.balance_sums(&tenant_id).await.unwrap();
    assert!(sums.iter().all(|(_, s)| *s == 0), "{sums:?}");
    for a in &accounts {
        let acc = app.get(&format!("/v1/accounts/{a}"), &m).await.body;
        assert!(acc["posted_balance"].as_i64().unwrap() >= 0);
        let last = app
            .get(&format!("/v1/accounts/{a}/entries?limit=1"), &m)
            .await
            .body;
        assert_eq!(last["data"][0]["balance_after"], acc["posted_balance"]);
    }
    let _ = PASSWORD;
}

backend_tests!(killed_mid_burst_the_ledger_loses_nothing_and_posts_nothing_twice);
