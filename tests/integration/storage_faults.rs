//! Storage faults (issue 13, item 19): the database runs out of space (SQLite, its file capped
//! with `PRAGMA max_page_count` on every connection) or loses its connections mid-transaction
//! (PostgreSQL, backends killed with `pg_terminate_backend`) in the middle of a burst of
//! transfers. While it lasts, answers are 503 `storage_unavailable` with `Retry-After` (never
//! 500), `/readyz` says the database is not ready, and the log does not take a line per failed
//! request. Once the fault ends, writes succeed again within seconds without a restart, every
//! acknowledged movement is there exactly once, the books balance and the audit chain verifies.

use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::backend_tests;
use crate::support::{Backend, TestApp};

/// What one keyed transfer got.
#[derive(Debug, Clone)]
enum Outcome {
    /// 201 with this transfer id.
    Acked(String),
    /// 503 `storage_unavailable` with a `Retry-After` header.
    Unavailable,
    /// Anything else (the test fails on it): status and body.
    Other(String),
}

/// Sends one keyed transfer straight to `router`.
async fn keyed_transfer(router: Router, token: &str, key: &str, body: &Value) -> Outcome {
    let req = Request::post("/v1/transfers")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").cloned();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match status.as_u16() {
        201 => Outcome::Acked(v["id"].as_str().unwrap().to_owned()),
        503 if v["error"]["code"] == "storage_unavailable"
            && v["error"]["type"] == "api_error"
            && retry_after
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= 1) =>
        {
            Outcome::Unavailable
        }
        s => Outcome::Other(format!("{s} {v} retry-after={retry_after:?}")),
    }
}

/// Log lines written on this thread, for counting ERROR lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn error_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(str::to_owned)
            .collect()
    }
}

/// The fault, per backend.
enum Fault {
    /// The SQLite file capped at its current size.
    Full,
    /// A PostgreSQL session holding `accounts` in EXCLUSIVE mode (plain reads pass, the ledger's
    /// `SELECT … FOR UPDATE` waits) and a task killing every backend that waits on it: every
    /// posting transaction dies mid-way.
    Killed {
        lock: sqlx::PgConnection,
        stop: Arc<std::sync::atomic::AtomicBool>,
        killer: tokio::task::JoinHandle<u64>,
    },
}

fn sqlite_store(app: &TestApp) -> &kasho::store::sqlite::SqliteStore {
    app.core
        .store
        .as_any()
        .downcast_ref::<kasho::store::sqlite::SqliteStore>()
        .expect("a SQLite store")
}

async fn start_fault(app: &TestApp) -> Fault {
    match app.backend {
        Backend::Sqlite => {
            sqlite_store(app).limit_pages(Some(1));
            Fault::Full
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut lock = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
            sqlx::query("LOCK TABLE accounts IN EXCLUSIVE MODE")
                .execute(&mut lock)
                .await
                .unwrap();
            let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                .fetch_one(&mut lock)
                .await
                .unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let admin = sqlx::PgPool::connect(&crate::support::pg_admin_url())
                .await
                .unwrap();
            let done = stop.clone();
            let killer = tokio::spawn(async move {
                let mut killed = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let rows: Vec<(bool,)> = sqlx::query_as(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE $1 = ANY(pg_blocking_pids(pid))",
                    )
                    .bind(pid)
                    .fetch_all(&admin)
                    .await
                    .unwrap_or_default();
                    killed += rows.len() as u64;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                admin.close().await;
                killed
            });
            Fault::Killed { lock, stop, killer }
        }
    }
}

async fn end_fault(app: &TestApp, fault: Fault) {
    match fault {
        Fault::Full => sqlite_store(app).limit_pages(None),
        Fault::Killed {
            mut lock,
            stop,
            killer,
        } => {
            stop.store(true, std::sync::atomic::Ordering::Release);
            let killed = killer.await.unwrap();
            assert!(killed > 0, "the fault killed backends mid-transaction");
            sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        }
    }
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let r = app.request(Method::GET, "/readyz", None, None).await;
    (r.status, r.body)
}

async fn a_storage_fault_mid_burst_answers_503_then_heals_without_a_restart(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let m = t.manager_token.clone();
    let accounts = crate::ledger::funded_accounts(app, &t, 4, 1_000_000).await;
    let accts = accounts.clone();
    let body_for = move |key: &str| {
        let n = key.bytes().map(usize::from).sum::<usize>();
        json!({ "amount": 1 + (n % 50), "currency": "USD",
                "debit_account_id": accts[n % 4], "credit_account_id": accts[(n + 1) % 4] })
    };
    // key -> (body, last outcome)
    let outcomes: Rc<std::cell::RefCell<HashMap<String, (Value, Outcome)>>> = Rc::default();
    let count = |o: &Rc<std::cell::RefCell<HashMap<String, (Value, Outcome)>>>| {
        let o = o.borrow();
        let acked = o
            .values()
            .filter(|(_, x)| matches!(x, Outcome::Acked(_)))
            .count();
        let failed = o
            .values()
            .filter(|(_, x)| !matches!(x, Outcome::Acked(_)))
            .count();
        (acked, failed)
    };

    // The request path runs on this thread (a LocalSet), so a thread-local subscriber sees what
    // it logs.
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let log_guard = tracing::subscriber::set_default(subscriber);

    let local = tokio::task::LocalSet::new();
    let stop = Rc::new(std::cell::Cell::new(false));
    let mut fault = None;
    local
        .run_until(async {
            let mut clients = Vec::new();
            for c in 0..8 {
                let (router, m, outcomes, stop) = (
                    app.router.clone(),
                    m.clone(),
                    outcomes.clone(),
                    stop.clone(),
                );
                let body_for = body_for.clone();
                clients.push(tokio::task::spawn_local(async move {
                    tracing::warn!("storage fault test: client {c} logs on the captured thread");
                    for i in 0.. {
                        if stop.get() {
                            break;
                        }
                        let key = format!("burst-{c}-{i}");
                        let body = body_for(&key);
                        let o = keyed_transfer(router.clone(), &m, &key, &body).await;
                        outcomes.borrow_mut().insert(key, (body, o));
                    }
                }));
            }
            // The fault strikes once the burst is well under way...
            let started = Instant::now();
            while count(&outcomes).0 < 40 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "burst too slow"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            fault = Some(start_fault(app).await);
            // ... and lasts until requests have failed on it.
            let started = Instant::now();
            while count(&outcomes).1 < 24 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the fault never failed a request: {:?}",
                    count(&outcomes)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.set(true);
            for c in clients {
                c.await.unwrap();
            }
        })
        .await;
    let fault = fault.expect("fault started");

    // Still inside the fault: the next write fails too (on SQLite a small one may still fit in
    // a page's free space; the file stays full, so one fails soon) and readiness says so.
    let mut probes = 0;
    loop {
        let key = format!("probe-{probes}");
        let body = body_for(&key);
        let o = keyed_transfer(app.router.clone(), &m, &key, &body).await;
        let failed = !matches!(o, Outcome::Acked(_));
        outcomes.borrow_mut().insert(key, (body, o));
        probes += 1;
        if failed {
            break;
        }
        assert!(probes < 200, "writes kept succeeding on a full store");
    }
    let (status, ready) = readyz(app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert_eq!(ready["checks"]["database"], "failing", "{ready}");
    if app.backend == Backend::Sqlite {
        // Writes over the pool (not the ledger writer) fail the same way.
        for _ in 0..8 {
            let r = app.post("/v1/customers", Some(&m), json!({})).await;
            assert!(
                r.status == StatusCode::CREATED
                    || (r.status == StatusCode::SERVICE_UNAVAILABLE
                        && r.code() == "storage_unavailable"
                        && r.headers.contains_key("retry-after")),
                "{r:?}"
            );
        }
    }
    drop(log_guard);

    // Every answer during the fault was a 201 or a 503 storage_unavailable with Retry-After.
    let others: Vec<String> = outcomes
        .borrow()
        .iter()
        .filter_map(|(k, (_, o))| match o {
            Outcome::Other(answer) => Some(format!("{k}: {answer}")),
            _ => None,
        })
        .collect();
    assert!(others.is_empty(), "unexpected answers: {others:?}");
    // The log took a line per kind of failure, not one (or two) per failed request.
    let (_, failed) = count(&outcomes);
    assert!(
        String::from_utf8_lossy(&captured.0.lock().unwrap())
            .contains("logs on the captured thread"),
        "the request path's log is captured"
    );
    let errors = captured.error_lines();
    assert!(
        errors.len() <= 10,
        "{} ERROR lines for {failed} failed requests:\n{}",
        errors.len(),
        errors.join("\n")
    );

    // The fault ends: writes succeed again within seconds, on the same process.
    end_fault(app, fault).await;
    let started = Instant::now();
    let mut n = 0;
    loop {
        let key = format!("heal-{n}");
        let body = body_for(&key);
        let o = keyed_transfer(app.router.clone(), &m, &key, &body).await;
        let acked = matches!(o, Outcome::Acked(_));
        outcomes.borrow_mut().insert(key, (body, o));
        if acked {
            break;
        }
        n += 1;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "writes did not recover within 5 s: {:?}",
            outcomes.borrow().get(&format!("heal-{}", n - 1))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, ready) = readyz(app).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    // Every pooled connection serves writes again (none was put back inside a transaction).
    for _ in 0..12 {
        let r = app.post("/v1/customers", Some(&m), json!({})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }

    // Retrying each unanswered request with its key posts it (or replays it) once.
    let retry: Vec<(String, Value)> = outcomes
        .borrow()
        .iter()
        .filter(|(_, (_, o))| matches!(o, Outcome::Unavailable))
        .map(|(k, (b, _))| (k.clone(), b.clone()))
        .collect();
    assert!(!retry.is_empty());
    for (key, body) in &retry {
        let o = keyed_transfer(app.router.clone(), &m, key, body).await;
        assert!(matches!(o, Outcome::Acked(_)), "retry of {key}: {o:?}");
        outcomes.borrow_mut().insert(key.clone(), (body.clone(), o));
    }
    // An acknowledged key replays its transfer.
    let (key, (body, first)) = outcomes
        .borrow()
        .iter()
        .find(|(k, _)| k.starts_with("burst-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let again = keyed_transfer(app.router.clone(), &m, &key, &body).await;
    assert_eq!(format!("{again:?}"), format!("{first:?}"));

    // Every acknowledged movement is present exactly once, and nothing else is.
    let ids: Vec<String> = outcomes
        .borrow()
        .values()
        .map(|(_, o)| match o {
            Outcome::Acked(id) => id.clone(),
            o => panic!("unanswered after the retries: {o:?}"),
        })
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no key posted twice");
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let stored: Vec<String> = app
        .core
        .store
        .list_transfers(
            &tenant,
            &kasho::store::TransferFilter::default(),
            &kasho::store::Page {
                limit: 100_000,
                starting_after: None,
            },
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == "transfer")
        .map(|t| t.id)
        .collect();
    let stored_set: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(stored.len(), stored_set.len());
    assert_eq!(
        stored_set, unique,
        "the ledger holds exactly the acknowledged transfers"
    );
    // Balances match the movements: each account's balance is its last entry's, the books
    // sum to zero, and the total moved in and out agrees with the bodies acknowledged.
    crate::ledger::assert_accounts_consistent(app, &t, &accounts).await;
    let mut expected: HashMap<String, i64> =
        accounts.iter().map(|a| (a.clone(), 1_000_000)).collect();
    for (body, _) in outcomes.borrow().values() {
        let amount = body["amount"].as_i64().unwrap();
        *expected
            .get_mut(body["debit_account_id"].as_str().unwrap())
            .unwrap() -= amount;
        *expected
            .get_mut(body["credit_account_id"].as_str().unwrap())
            .unwrap() += amount;
    }
    for (a, want) in &expected {
        let got = app.get(&format!("/v1/accounts/{a}"), &m).await.body["posted_balance"]
            .as_i64()
            .unwrap();
        assert_eq!(got, *want, "balance of {a}");
    }
    kasho::service::audit::verify_all(&*app.core.store, &app.core.sealer, |_| {}, |_| {})
        .await
        .expect("the audit chain verifies");
}

backend_tests!(a_storage_fault_mid_burst_answers_503_then_heals_without_a_restart);

/// SQLite: a pooled connection whose transaction sqlx could not end (its ROLLBACK failed, as
/// after a COMMIT that SQLite had already rolled back on a full disk) goes back to the pool
/// still counted inside a transaction; reused, every `BEGIN` on it failed with "attempted to
/// call begin_with at non-zero transaction depth" until a restart. It is discarded instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_connection_left_inside_a_transaction_is_discarded_not_reused() {
    let app = TestApp::new(Backend::Sqlite).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let pool = sqlite_store(&app).pool().clone();
    // Leave every pooled connection the way a failed COMMIT leaves one: SQLite outside any
    // transaction, sqlx still counting one open (its own ROLLBACK on drop then fails).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        held.push(tx);
    }
    drop(held);
    for i in 0..12 {
        let r = app
            .post("/v1/customers", Some(&t.manager_token), json!({}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "write {i}: {r:?}");
    }
    app.cleanup().await;
}
