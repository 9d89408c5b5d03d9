//! Several instances: two real `kasho serve` processes on different ports, sharing one
//! PostgreSQL database and one Redis, behave as one service. A logout through one is honoured by
//! the other at once, a spent refresh token replayed on the other instance revokes the family,
//! rate limits are one budget, and concurrent transfers through both keep every ledger invariant.
//!
//! PostgreSQL only: the embedded SQLite backend is the one-machine deployment (one process owns
//! the file); several instances are what PostgreSQL is for (docs/ARCHITECTURE.md).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::ledger::{assert_accounts_consistent, funded_accounts};
use crate::support::{Backend, PASSWORD, Served, TestApp, free_port, http1, serve_command};

/// Starts an instance with its own data directory but the deployment's shared key files,
/// database and Redis, as N instances behind a load balancer are run.
async fn start(app: &TestApp, keys: &Path, data_dir: &Path, redis_prefix: &str) -> Served {
    let port = free_port();
    let log = data_dir.join("server.log");
    let mut cmd = serve_command(data_dir, &app.database_url, port, &log);
    cmd.env(
        "KASHO_JWT_SIGNING_KEY_FILE",
        keys.join(kasho::crypto::keys::JWT_KEY_FILE),
    )
    .env(
        "KASHO_MASTER_KEY_FILE",
        keys.join(kasho::crypto::keys::MASTER_KEY_FILE),
    )
    .envs(crate::support::generous_limits_env())
    .env("KASHO_REDIS_URL", "redis://127.0.0.1:6379")
    .env("KASHO_REDIS_KEY_PREFIX", redis_prefix)
    // One sign-in budget per client address, small enough to see it shared.
    .env("KASHO_RATE_LIMIT_LOGIN", "6/600")
    .env("KASHO_LOG_LEVEL", "warn");
    let instance = Served::start(cmd, port, log).await;
    // Listening is not enough: the instance must answer.
    for _ in 0..300 {
        if get(instance.addr(), "/healthz", None).await.0 == 200 {
            return instance;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "kasho serve on port {port} never answered /healthz:\n{}",
        instance.log()
    );
}

/// One request on a fresh connection: status, headers (lower-cased names), JSON body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Vec<(String, String)>, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("Authorization", b))
        .into_iter()
        .collect();
    headers.extend_from_slice(extra);
    let r = http1(addr, method, path, &headers, body).await;
    let json = r.json();
    (r.status, r.headers, json)
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let (s, _, b) = http(addr, "GET", path, token, &[], None).await;
    (s, b)
}

async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let (s, _, b) = http(addr, "POST", path, token, &[], Some(&body)).await;
    (s, b)
}

async fn login(addr: SocketAddr, tenant: &str) -> Value {
    let (s, v) = post(
        addr,
        "/v1/auth/login",
        None,
        json!({ "tenant": tenant, "email": "manager@acme.test", "password": PASSWORD }),
    )
    .await;
    assert_eq!(s, 200, "sign-in: {v}");
    v
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_kasho_serve_processes_on_one_postgresql_and_redis_behave_as_one_service() {
    let app = TestApp::new(Backend::Postgres).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let keys = app.data_dir.path().join("keys");
    let keys = keys.as_path();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let prefix = format!("kasho-test-{}:", uuid::Uuid::now_v7().simple());
    let a = start(&app, keys, dir_a.path(), &prefix).await;
    let b = start(&app, keys, dir_b.path(), &prefix).await;
    let (a, b) = (a.addr(), b.addr());

    // 1. A logout through one instance ends the session on the other at once.
    let session = login(a, &t.slug).await;
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(get(b, "/v1/me", Some(access)).await.0, 200);
    let (s, v) = post(a, "/v1/auth/logout", Some(access), json!({})).await;
    assert!((200..300).contains(&s), "logout: {s} {v}");
    let (s, v) = get(b, "/v1/me", Some(access)).await;
    assert_eq!(
        s, 401,
        "the other instance still accepts a logged-out token: {v}"
    );

    // 2. Refresh reuse is detected whichever instance sees the replay.
    let session = login(b, &t.slug).await;
    let first = session["refresh_token"].as_str().unwrap();
    let (s, rotated) = post(
        a,
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": first }),
    )
    .await;
    assert_eq!(s, 200, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap();
    let (s, v) = post(
        b,
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": first }),
    )
    .await;
    assert_eq!(
        s, 401,
        "a spent refresh token replayed on the other instance: {v}"
    );
    let (s, v) = post(
        a,
        "/v1/auth/refresh",
        None,
        json!({ "refresh_token": second }),
    )
    .await;
    assert_eq!(s, 401, "the replay revoked the whole family: {v}");
    let (s, _) = get(a, "/v1/me", rotated["access_token"].as_str()).await;
    assert_eq!(s, 401, "and its access tokens");

    // 3. Concurrent transfers through both instances keep every ledger invariant.
    let m = t.manager_token.clone();
    let accounts = funded_accounts(&app, &t, 4, 1_000).await;
    let mut tasks = Vec::new();
    for c in 0..16usize {
        let (accounts, m) = (accounts.clone(), m.clone());
        let to = if c % 2 == 0 { a } else { b };
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..5usize {
                let from = &accounts[(c + i) % accounts.len()];
                let dest = &accounts[(c + i + 1) % accounts.len()];
                let amount = 50 + ((c * 37 + i * 91) % 400) as i64;
                let key = format!("inst-{c}-{i}");
                let (s, _, v) = http(
                    to,
                    "POST",
                    "/v1/transfers",
                    Some(&m),
                    &[("Idempotency-Key", &key)],
                    Some(&json!({ "amount": amount, "currency": "USD",
                                  "debit_account_id": from, "credit_account_id": dest })),
                )
                .await;
                out.push((s, v));
            }
            out
        }));
    }
    let mut created = 0;
    for task in tasks {
        for (s, v) in task.await.unwrap() {
            match s {
                201 => created += 1,
                422 => assert_eq!(v["error"]["code"], "insufficient_funds", "{v}"),
                other => panic!("unexpected {other}: {v}"),
            }
        }
    }
    assert!(created > 20, "most transfers went through: {created}");
    // No account below zero, every balance equals its last entry's running balance, the
    // tenant's books sum to zero, and the money among the four accounts is conserved.
    assert_accounts_consistent(&app, &t, &accounts).await;
    let mut total = 0;
    for acc in &accounts {
        let (s, v) = get(a, &format!("/v1/accounts/{acc}"), Some(&m)).await;
        assert_eq!(s, 200, "{v}");
        total += v["posted_balance"].as_i64().unwrap();
    }
    assert_eq!(total, 4_000);
    kasho::service::audit::verify_all(&*app.core.store, &app.core.sealer, |_| {}, |_| {})
        .await
        .expect("both instances appended to one unforked audit chain");
    // 4. One sign-in budget across both instances (6 per address; two sign-ins spent above).
    // Unknown emails, so the per-account failure delay never answers first.
    let mut outcomes = Vec::new();
    for i in 0..6 {
        let to = if i % 2 == 0 { a } else { b };
        let (s, h, v) = http(
            to,
            "POST",
            "/v1/auth/login",
            None,
            &[],
            Some(&json!({ "tenant": t.slug, "email": format!("nobody{i}@acme.test"), "password": "wrong password here" })),
        )
        .await;
        outcomes.push((
            s,
            v["error"]["code"].as_str().unwrap_or("").to_owned(),
            header(&h, "ratelimit-remaining").map(str::to_owned),
            header(&h, "retry-after").map(str::to_owned),
        ));
    }
    let codes: Vec<_> = outcomes.iter().map(|o| (o.0, o.1.as_str())).collect();
    assert_eq!(
        codes,
        vec![
            (401, "invalid_credentials"),
            (401, "invalid_credentials"),
            (401, "invalid_credentials"),
            (401, "invalid_credentials"),
            (429, "rate_limited"),
            (429, "rate_limited"),
        ],
        "the budget is shared, not one per instance: {outcomes:?}"
    );
    let remaining: Vec<_> = outcomes.iter().map(|o| o.2.as_deref()).collect();
    assert_eq!(
        remaining,
        vec![
            Some("3"),
            Some("2"),
            Some("1"),
            Some("0"),
            Some("0"),
            Some("0")
        ],
        "{outcomes:?}"
    );
    assert!(
        outcomes[4]
            .3
            .as_deref()
            .and_then(|r| r.parse::<u64>().ok())
            .is_some_and(|r| r >= 1),
        "a refusal says when to retry: {outcomes:?}"
    );

    app.cleanup().await;
}
