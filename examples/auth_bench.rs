//! Authentication benchmark: Argon2id cost at the production parameters, login throughput, and
//! the cost of an authenticated request (JWT verification + the per-request session check).
//!
//! Runs the whole router in-process (no sockets), against a temporary SQLite database or a fresh
//! PostgreSQL schema:
//!
//!     cargo run --release --example auth_bench -- sqlite
//!     cargo run --release --example auth_bench -- postgres [postgres://postgres@127.0.0.1:5432/test]
//!
//! With `KASHO_BENCH_REDIS_URL` (e.g. redis://127.0.0.1:6379) the rate-limit buckets live in
//! that Redis, as when several instances share them (a key prefix of its own per run).
//!
//! Method and results: docs/PERFORMANCE.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use kasho::clock::SystemClock;
use kasho::config::Config;
use kasho::domain::authz::Role;
use kasho::domain::values::Email;
use kasho::ids::UserId;
use kasho::store::NewUser;
use tower::ServiceExt;

const PASSWORD: &str = "correct horse battery staple";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// CPU time (user + system, in clock ticks of 10 ms) of this process and of the local
/// PostgreSQL server's processes, from `/proc` (zero where it cannot be read).
fn cpu_ticks() -> (u64, u64) {
    fn ticks(stat: &str) -> Option<(String, u64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let user: u64 = fields.get(11)?.parse().ok()?;
        let system: u64 = fields.get(12)?.parse().ok()?;
        Some((comm, user + system))
    }
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0, |(_, t)| t);
    let mut postgres = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some((comm, t)) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| ticks(&s))
                && comm == "postgres"
            {
                postgres += t;
            }
        }
    }
    (own, postgres)
}

/// Whether `resp` is a success; prints the answer of a failure (once the run stops on it).
async fn answered(resp: axum::response::Response) -> bool {
    let status = resp.status();
    if status.is_success() {
        return true;
    }
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    eprintln!("{status}: {}", String::from_utf8_lossy(&body));
    false
}

async fn run<F, Fut>(label: &str, total: usize, concurrency: usize, f: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let f = Arc::new(f);
    let cpu_before = cpu_ticks();
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let f = f.clone();
        let n = total / concurrency + usize::from(w < total % concurrency);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                assert!(f().await, "request failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu_ticks();
    all.sort();
    // Clock ticks are 10 ms; per request in µs.
    let per_request = |ticks: u64| ticks as f64 * 10_000.0 / total as f64;
    println!(
        "{label:<44} {total:>6} req  conc {concurrency:>3}  {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU/req {:>6.1} µs kasho + {:>6.1} µs postgres",
        total as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        per_request(cpu_after.0 - cpu_before.0),
        per_request(cpu_after.1.saturating_sub(cpu_before.1)),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map_or("sqlite", String::as_str).to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (url, schema) = if backend == "postgres" {
        let admin = args
            .get(2)
            .cloned()
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await
            .unwrap();
        (
            format!("{admin}?options[search_path]={schema}"),
            Some((admin, schema)),
        )
    } else {
        (format!("sqlite://{}/kasho.db", dir.path().display()), None)
    };
    let data_dir = dir.path().display().to_string();
    let redis = std::env::var("KASHO_BENCH_REDIS_URL").ok();
    let prefix = format!("kasho-bench:{}:", uuid::Uuid::now_v7().simple());
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(url) = redis.as_deref() {
        pairs.extend([("redis_url", url), ("redis_key_prefix", prefix.as_str())]);
    }
    // Production hashing parameters (the defaults).
    pairs.extend([
        ("data_dir", data_dir.as_str()),
        ("database_url", url.as_str()),
        // What is measured is the server's work, not its rate limits (one client address
        // and one credential send every request here).
        ("rate_limit_ip", "10000000/60"),
        ("rate_limit_credential", "10000000/60"),
        ("rate_limit_tenant", "10000000/60"),
        ("rate_limit_login", "10000000/60"),
        ("rate_limit_refresh", "10000000/60"),
    ]);
    let config = Config::from_pairs(&pairs).unwrap();
    let core = kasho::app::build_core(&config, Arc::new(SystemClock), true)
        .await
        .unwrap();
    // One client address, as a socket would give it: the per-address ban check and bucket run
    // as they do in `kasho serve` (without one they are skipped).
    let router = kasho::http::router(core.clone(), config.max_body_bytes).layer(
        axum::extract::connect_info::MockConnectInfo(std::net::SocketAddr::from((
            [203, 0, 113, 9],
            4242,
        ))),
    );
    match core.limits.redis_reachable().await {
        None => println!("rate limits: in process"),
        Some(true) => println!("rate limits: shared in Redis"),
        Some(false) => panic!("KASHO_BENCH_REDIS_URL is set but Redis is unreachable"),
    }
    println!(
        "backend {backend}; Argon2id m={} KiB t={} p={}; {} CPUs",
        config.argon2.memory_kib,
        config.argon2.iterations,
        config.argon2.parallelism,
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    // 1. Raw hashing cost.
    let t = Instant::now();
    let n = 10;
    for _ in 0..n {
        core.hasher.hash(&PASSWORD.into()).await.unwrap();
    }
    println!(
        "argon2id hash (one at a time)                {:>8.2} ms each",
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    );

    // A platform admin to sign in as.
    let user = NewUser {
        id: UserId::generate(),
        tenant_id: None,
        email_hash: kasho::service::users::email_hash(&core, None, "bench@platform.test"),
        email: Email::parse("bench@platform.test")
            .unwrap()
            .as_str()
            .to_owned(),
        password_hash: core.hasher.hash(&PASSWORD.into()).await.unwrap(),
        roles: vec![Role::PlatformAdmin],
        created_at: kasho::clock::Clock::now(&SystemClock),
    };
    core.store.create_user(&user, &[]).await.unwrap();
    let login_body =
        serde_json::json!({ "email": "bench@platform.test", "password": PASSWORD }).to_string();

    // 2. Logins (each: one Argon2id verification, a session + refresh token + audit record written).
    let r = router.clone();
    let body = login_body.clone();
    // One at a time: a guess is counted before its password is checked (issue 13), so
    // concurrent sign-ins of one account meet the progressive delay.
    run("POST /v1/auth/login", 20, 1, move || {
        let r = r.clone();
        let body = body.clone();
        async move {
            let req = Request::post("/v1/auth/login")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            answered(r.oneshot(req).await.unwrap()).await
        }
    })
    .await;

    // 3. Authenticated reads: JWT verification + session lookup per request.
    let req = Request::post("/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(login_body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let token: String =
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
    for conc in [1, 16] {
        let r = router.clone();
        let token = token.clone();
        run("GET /v1/me (authenticated)", 20_000, conc, move || {
            let r = r.clone();
            let token = token.clone();
            async move {
                let req = Request::get("/v1/me")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap();
                answered(r.oneshot(req).await.unwrap()).await
            }
        })
        .await;
    }
    // 4. Unauthenticated baseline (routing, middleware, JSON).
    let r = router.clone();
    run("GET /healthz (no auth, baseline)", 20_000, 16, move || {
        let r = r.clone();
        async move {
            r.oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
                .is_success()
        }
    })
    .await;

    if let Some((admin, schema)) = schema {
        let pool = sqlx::PgPool::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
    }
}
