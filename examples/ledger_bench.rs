//! Ledger throughput benchmark over real HTTP.
//!
//! Starts a Kasho server in-process on 127.0.0.1 (SQLite in a temporary directory, or a fresh
//! PostgreSQL schema), creates a tenant and N funded accounts through the API, then drives
//! authenticated single transfers (each with an Idempotency-Key) from C concurrent keep-alive
//! connections for T seconds, uniformly or on a few hot accounts (Zipf, s = 1). Every security
//! layer is on: token verification and session check, permission check, idempotency, audit
//! chain, durable commits (SQLite synchronous=FULL, PostgreSQL synchronous_commit=on).
//!
//!     cargo run --release --example ledger_bench -- --backend sqlite --clients 64 --seconds 10
//!     cargo run --release --example ledger_bench -- --backend postgres --profile zipf --json out.json
//!
//! Prints transfers/s, latency percentiles and errors, then verifies the ledger's invariants.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kasho::clock::SystemClock;
use kasho::config::Config;
use kasho::domain::authz::Role;
use kasho::domain::values::Email;
use kasho::ids::UserId;
use kasho::store::NewUser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PASSWORD: &str = "correct horse battery staple";

/// A minimal HTTP/1.1 keep-alive client: enough for JSON requests with Content-Length.
struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            io: BufReader::new(s),
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(k) = key {
            req.push_str(&format!("Idempotency-Key: {k}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        self.io.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.io.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.io.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0u8; len];
        self.io.read_exact(&mut buf).await.unwrap();
        (status, serde_json::from_slice(&buf).unwrap_or(Value::Null))
    }
}

/// xorshift64*: deterministic, dependency-free randomness for load generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let backend = arg(&args, "--backend", "sqlite");
    let n_accounts: usize = arg(&args, "--accounts", "1000").parse().unwrap();
    let clients: usize = arg(&args, "--clients", "64").parse().unwrap();
    let seconds: u64 = arg(&args, "--seconds", "10").parse().unwrap();
    let profile = arg(&args, "--profile", "uniform");
    let batch: usize = arg(&args, "--batch", "1").parse().unwrap();
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();

    let dir = tempfile::tempdir().unwrap();
    let pg_admin = arg(&args, "--pg", "postgres://postgres@127.0.0.1:5432/test");
    let (url, schema) = if backend == "postgres" {
        let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&pg_admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await
            .unwrap();
        (
            format!("{pg_admin}?options[search_path]={schema}"),
            Some(schema),
        )
    } else {
        (format!("sqlite://{}/kasho.db", dir.path().display()), None)
    };
    let data_dir = dir.path().display().to_string();
    let config = Config::from_pairs(&[
        ("data_dir", &data_dir),
        ("database_url", &url),
        ("database_max_connections", "8"),
    ])
    .unwrap();
    let core = kasho::app::build_core(&config, Arc::new(SystemClock), true)
        .await
        .unwrap();
    let app = kasho::http::router(core.clone(), config.max_body_bytes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });

    // Set-up through the API.
    let user = NewUser {
        id: UserId::generate(),
        tenant_id: None,
        email: Email::parse("bench@platform.test").unwrap(),
        password_hash: core.hasher.hash(&PASSWORD.into()).await.unwrap(),
        roles: vec![Role::PlatformAdmin],
        created_at: kasho::clock::Clock::now(&SystemClock),
    };
    core.store.create_user(&user, &[]).await.unwrap();
    let mut c = Conn::open(addr).await;
    let (_, login) = c
        .send(
            "POST",
            "/v1/auth/login",
            None,
            None,
            Some(&json!({ "email": "bench@platform.test", "password": PASSWORD })),
        )
        .await;
    let admin = login["access_token"].as_str().unwrap().to_owned();
    let (s, tenant) = c
        .send(
            "POST",
            "/v1/tenants",
            Some(&admin),
            None,
            Some(
                &json!({ "slug": "bench", "name": "Bench", "currencies": ["USD"],
            "manager": { "email": "m@bench.test", "password": PASSWORD } }),
            ),
        )
        .await;
    assert_eq!(s, 201, "{tenant}");
    let (_, login) = c
        .send(
            "POST",
            "/v1/auth/login",
            None,
            None,
            Some(&json!({ "tenant": "bench", "email": "m@bench.test", "password": PASSWORD })),
        )
        .await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    let mut accounts = Vec::with_capacity(n_accounts);
    for _ in 0..n_accounts {
        let (_, cus) = c
            .send(
                "POST",
                "/v1/customers",
                Some(&token),
                None,
                Some(&json!({})),
            )
            .await;
        let (_, acc) = c
            .send(
                "POST",
                "/v1/accounts",
                Some(&token),
                None,
                Some(&json!({ "customer_id": cus["id"], "currency": "USD" })),
            )
            .await;
        let id = acc["id"].as_str().unwrap().to_owned();
        let (s, _) = c
            .send(
                "POST",
                "/v1/deposits",
                Some(&token),
                None,
                Some(&json!({ "account_id": id, "amount": 10_000_000, "currency": "USD" })),
            )
            .await;
        assert_eq!(s, 201);
        accounts.push(id);
    }
    eprintln!(
        "set-up: {n_accounts} funded accounts in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Zipf (s = 1) over the accounts: a few are hot.
    let weights: Vec<f64> = (1..=n_accounts).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(n_accounts);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let cdf = Arc::new(cdf);
    let accounts = Arc::new(accounts);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (accounts, cdf, token, profile) = (
            accounts.clone(),
            cdf.clone(),
            token.clone(),
            profile.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
            let mut lat = Vec::new();
            let (mut ok, mut refused, mut errors) = (0u64, 0u64, 0u64);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let pick = |rng: &mut Rng| {
                    if profile == "zipf" {
                        let u = rng.unit();
                        cdf.partition_point(|c| *c < u).min(accounts.len() - 1)
                    } else {
                        rng.below(accounts.len())
                    }
                };
                let mut transfers = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let from = pick(&mut rng);
                    let mut to = pick(&mut rng);
                    if to == from {
                        to = (from + 1) % accounts.len();
                    }
                    transfers.push(json!({ "amount": 1 + rng.below(100) as i64, "currency": "USD",
                                           "debit_account_id": accounts[from], "credit_account_id": accounts[to] }));
                }
                let key = format!("b{client}-{i}");
                i += 1;
                let t = Instant::now();
                let (status, reply) = if batch == 1 {
                    conn.send("POST", "/v1/transfers", Some(&token), Some(&key), Some(&transfers[0])).await
                } else {
                    conn.send("POST", "/v1/transfers/batch", Some(&token), Some(&key), Some(&json!({ "transfers": transfers }))).await
                };
                lat.push(t.elapsed());
                if batch > 1 && status == 200 {
                    for r in reply["results"].as_array().into_iter().flatten() {
                        match r["status"].as_u64() {
                            Some(201) => ok += 1,
                            Some(422) => refused += 1,
                            _ => errors += 1,
                        }
                    }
                    continue;
                }
                match status {
                    201 => ok += 1,
                    422 => refused += 1,
                    _ => errors += 1,
                }
            }
            (lat, ok, refused, errors)
        }));
    }
    let mut lat = Vec::new();
    let (mut ok, mut refused, mut errors) = (0, 0, 0);
    for t in tasks {
        let (l, o, r, e) = t.await.unwrap();
        lat.extend(l);
        ok += o;
        refused += r;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    let tps = ok as f64 / elapsed;
    println!(
        "backend {backend}, profile {profile}, {clients} clients, {n_accounts} accounts, {elapsed:.1} s"
    );
    println!(
        "transfers/s {tps:.0}  (posted {ok}, refused {refused}, errors {errors})  latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );

    // Invariants.
    let tenant_id = kasho::ids::TenantId::parse(tenant["id"].as_str().unwrap()).unwrap();
    let sums = core.store.balance_sums(&tenant_id).await.unwrap();
    let balanced = sums.iter().all(|(_, s)| *s == 0);
    let mut floor_ok = true;
    let mut page = kasho::store::Page {
        limit: 100,
        starting_after: None,
    };
    loop {
        let rows = core
            .store
            .list_accounts(&tenant_id, None, &page)
            .await
            .unwrap();
        if rows.is_empty() {
            break;
        }
        for a in rows.iter().take(100) {
            floor_ok &= a.posted - a.pending_debits >= -a.overdraft_limit;
        }
        if rows.len() <= 100 {
            break;
        }
        page.starting_after = rows.get(99).map(|a| a.id.clone());
    }
    println!(
        "invariants: balances sum to zero: {balanced}; every account within its floor: {floor_ok}"
    );
    if let Some(path) = json_out {
        let out = json!({ "backend": backend, "profile": profile, "clients": clients, "accounts": n_accounts, "seconds": elapsed,
            "transfers_per_second": tps, "posted": ok, "refused": refused, "errors": errors,
            "batch": batch, "latency_ms": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
            "invariants": { "balanced": balanced, "within_floor": floor_ok } });
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    }
    if let Some(schema) = schema {
        let pool = sqlx::PgPool::connect(&pg_admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
    }
    if !(balanced && floor_ok) || errors > 0 {
        std::process::exit(1);
    }
}
