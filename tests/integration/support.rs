//! The test harness: a [`TestApp`] runs the whole router in-process against a fresh database
//! (a temporary SQLite file, or a fresh PostgreSQL schema), with a manual clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use kasho::clock::ManualClock;
use kasho::config::Config;
use kasho::domain::authz::Role;
use kasho::domain::values::Email;
use kasho::ids::UserId;
use kasho::service::Core;
use kasho::store::NewUser;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The PostgreSQL server the suite runs against.
pub fn pg_admin_url() -> String {
    std::env::var("KASHO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub const PASSWORD: &str = "correct horse battery staple";

/// Limits so generous that no test but the rate-limit tests ever meets one (those pass their
/// own values, which come later and win).
pub const GENEROUS_LIMITS: &[(&str, &str)] = &[
    ("rate_limit_ip", "100000/60"),
    ("rate_limit_credential", "100000/60"),
    ("rate_limit_tenant", "100000/60"),
    ("rate_limit_login", "100000/60"),
    ("rate_limit_refresh", "100000/60"),
    ("rate_limit_mfa", "100000/60"),
    ("rate_limit_password_reset", "100000/60"),
    ("intrusion_error_burst", "100000/60"),
    ("refusal_budget", "1000000/60"),
];

/// The same, as `kasho serve` environment variables for child-process tests.
pub fn generous_limits_env() -> Vec<(String, String)> {
    GENEROUS_LIMITS
        .iter()
        .map(|(k, v)| (format!("KASHO_{}", k.to_ascii_uppercase()), (*v).to_owned()))
        .collect()
}

/// A free TCP port on loopback (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `kasho serve` on 127.0.0.1:`port` over `data_dir` and `database_url`, with the settings
/// every test server runs with (cheap Argon2, no MFA requirement) and its output in `log`.
/// Callers add what their test is about.
pub fn serve_command(data_dir: &Path, database_url: &str, port: u16, log: &Path) -> Command {
    let out = std::fs::File::create(log).expect("create the server log");
    let err = out.try_clone().expect("clone the server log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kasho"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(data_dir)
    .args(["--database-url", database_url])
    .env("KASHO_ARGON2_MEMORY_KIB", "64")
    .env("KASHO_ARGON2_ITERATIONS", "1")
    .env("KASHO_MFA_REQUIRED_ROLES", "")
    .stdout(Stdio::from(out))
    .stderr(Stdio::from(err));
    cmd
}

/// A running `kasho serve` (a child process), killed when dropped.
pub struct Served {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Served {
    /// Spawns `cmd` (from [`serve_command`] with the same `port` and `log`) and waits until the
    /// port accepts connections; panics with the log if the process exits or never listens.
    pub async fn start(mut cmd: Command, port: u16, log: PathBuf) -> Served {
        let child = cmd.spawn().expect("start kasho serve");
        let mut served = Served { child, port, log };
        for _ in 0..300 {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("kasho serve exited with {status}:\n{}", served.log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "kasho serve did not start on port {port}:\n{}",
            served.log()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process (SIGKILL on Unix: no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An answer read off the wire by [`http1`].
pub struct WireResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl WireResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 request to a child-process server on a fresh connection (`Connection: close`),
/// with a JSON body (empty when `None`) and `headers` on top; read to the end within 30 s.
pub async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> WireResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: kasho\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{head}\r\n{body}").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    WireResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub router: Router,
    pub core: Arc<Core>,
    pub clock: Arc<ManualClock>,
    pub backend: Backend,
    /// The URL the app's store uses (also usable by the `kasho` binary).
    pub database_url: String,
    pub data_dir: tempfile::TempDir,
    schema: Option<String>,
}

/// A response, decoded.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// A tenant with its first manager signed in.
pub struct TenantFixture {
    pub id: String,
    pub slug: String,
    pub manager_id: String,
    pub manager_token: String,
}

impl TestApp {
    pub async fn new(backend: Backend) -> TestApp {
        Self::with_checks(backend, Vec::new()).await
    }

    /// A test app whose ledger runs `checks` at its pre-commit check point.
    pub async fn with_checks(
        backend: Backend,
        checks: Vec<Arc<dyn kasho::domain::ledger::PreCommitCheck>>,
    ) -> TestApp {
        Self::build(backend, checks, &[]).await
    }

    /// A test app with extra configuration keys (e.g. a small key-rotation budget).
    pub async fn with_config(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
        Self::build(backend, Vec::new(), extra).await
    }

    async fn build(
        backend: Backend,
        checks: Vec<Arc<dyn kasho::domain::ledger::PreCommitCheck>>,
        extra: &[(&str, &str)],
    ) -> TestApp {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let (database_url, schema) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}/kasho.db", data_dir.path().display()),
                None,
            ),
            Backend::Postgres => {
                let schema = format!("kt_{}", uuid::Uuid::now_v7().simple());
                let admin = pg_admin_url();
                let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL is required for the test suite and is unreachable at {admin}: {e}")
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&pool)
                    .await
                    .expect("create schema");
                pool.close().await;
                let sep = if admin.contains('?') { '&' } else { '?' };
                (
                    format!("{admin}{sep}options[search_path]={schema}"),
                    Some(schema),
                )
            }
        };
        let dir = data_dir.path().display().to_string();
        let mut pairs: Vec<(&str, &str)> = vec![
            ("data_dir", &dir),
            ("database_url", &database_url),
            ("database_max_connections", "4"),
            // Cheap hashing keeps the suite fast; production floors are tested in config.
            ("argon2_memory_kib", "64"),
            ("argon2_iterations", "1"),
            // Tenants' MFA requirement is tested where it is set; elsewhere managers act at once.
            ("mfa_required_roles", ""),
        ];
        pairs.extend_from_slice(GENEROUS_LIMITS);
        pairs.extend_from_slice(extra);
        let config = Config::from_pairs(&pairs).expect("config");
        let clock = Arc::new(ManualClock::starting_now());
        let core = kasho::app::build_core_with_checks(&config, clock.clone(), true, checks)
            .await
            .expect("core");
        let router = kasho::http::router(core.clone(), config.max_body_bytes)
            .layer(MockConnectInfo(SocketAddr::from(([203, 0, 113, 7], 4242))));
        TestApp {
            router,
            core,
            clock,
            backend,
            database_url,
            data_dir,
            schema,
        }
    }

    /// A second Kasho instance on the same database and keys (its own core, ledger writer and
    /// in-flight set), as a second `kasho serve` process would be.
    pub async fn second_instance(&self) -> Router {
        let dir = self.data_dir.path().display().to_string();
        let mut pairs: Vec<(&str, &str)> = vec![
            ("data_dir", &dir),
            ("database_url", &self.database_url),
            ("database_max_connections", "4"),
            ("argon2_memory_kib", "64"),
            ("argon2_iterations", "1"),
            // Tenants' MFA requirement is tested where it is set; elsewhere managers act at once.
            ("mfa_required_roles", ""),
        ];
        pairs.extend_from_slice(GENEROUS_LIMITS);
        let config = Config::from_pairs(&pairs).expect("config");
        let core =
            kasho::app::build_core_with_checks(&config, self.clock.clone(), false, Vec::new())
                .await
                .expect("second core");
        kasho::http::router(core, config.max_body_bytes)
            .layer(MockConnectInfo(SocketAddr::from(([203, 0, 113, 8], 4242))))
    }

    /// Another core and router on the same database, keys and clock, configured with `extra`
    /// on top of the test configuration (e.g. a retention period).
    pub async fn instance_with(&self, extra: &[(&str, &str)]) -> (Arc<Core>, Router) {
        let dir = self.data_dir.path().display().to_string();
        let mut pairs = vec![
            ("data_dir", dir.as_str()),
            ("database_url", self.database_url.as_str()),
            ("database_max_connections", "4"),
            ("argon2_memory_kib", "64"),
            ("argon2_iterations", "1"),
            // Tenants' MFA requirement is tested where it is set; elsewhere managers act at once.
            ("mfa_required_roles", ""),
        ];
        pairs.extend_from_slice(GENEROUS_LIMITS);
        pairs.extend_from_slice(extra);
        let config = Config::from_pairs(&pairs).expect("config");
        let core =
            kasho::app::build_core_with_checks(&config, self.clock.clone(), false, Vec::new())
                .await
                .expect("configured core");
        let router = kasho::http::router(core.clone(), config.max_body_bytes)
            .layer(MockConnectInfo(SocketAddr::from(([203, 0, 113, 9], 4242))));
        (core, router)
    }

    /// Drops the PostgreSQL schema (the SQLite file goes with the temp dir).
    pub async fn cleanup(self) {
        if let Some(schema) = &self.schema
            && let Ok(pool) = sqlx::PgPool::connect(&pg_admin_url()).await
        {
            {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&pool)
                    .await;
                pool.close().await;
            }
        }
    }

    /// Runs a SQL statement directly against the app's database (for tampering tests).
    pub async fn raw_sql(&self, sql: &str) -> u64 {
        self.try_raw_sql(sql).await.expect("sql")
    }

    /// Like [`raw_sql`](Self::raw_sql) but reports a refused statement instead of failing.
    pub async fn try_raw_sql(&self, sql: &str) -> Result<u64, String> {
        let r = self.raw_statement(sql).await;
        // A write behind the service's back reaches this instance's session cache through the
        // invalidation channel within milliseconds (issue 15); tests that use the credential
        // on the next line need it at once.
        self.core.session_cache.forget_all();
        r
    }

    async fn raw_statement(&self, sql: &str) -> Result<u64, String> {
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.database_url)
                    .await
                    .map_err(|e| e.to_string())?;
                let r = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| e.to_string());
                pool.close().await;
                r
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.database_url)
                    .await
                    .map_err(|e| e.to_string())?;
                let r = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| e.to_string());
                pool.close().await;
                r
            }
        }
    }

    /// The first column of every row a query returns, as text (NULL as "").
    pub async fn raw_strings(&self, sql: &str) -> Vec<String> {
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.database_url)
                    .await
                    .expect("db");
                let rows: Vec<(Option<String>,)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                        .fetch_all(&pool)
                        .await
                        .expect("query");
                pool.close().await;
                rows.into_iter().map(|r| r.0.unwrap_or_default()).collect()
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.database_url).await.expect("db");
                let rows: Vec<(Option<String>,)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
                        .fetch_all(&pool)
                        .await
                        .expect("query");
                pool.close().await;
                rows.into_iter().map(|r| r.0.unwrap_or_default()).collect()
            }
        }
    }

    /// Every byte the database holds at rest: the SQLite file and its WAL, or a `pg_dump` of
    /// this test's schema.
    pub async fn bytes_at_rest(&self) -> Vec<u8> {
        match self.backend {
            Backend::Sqlite => {
                let mut all = Vec::new();
                for name in ["kasho.db", "kasho.db-wal"] {
                    if let Ok(b) = std::fs::read(self.data_dir.path().join(name)) {
                        all.extend(b);
                    }
                }
                all
            }
            Backend::Postgres => {
                let schema = self.schema.clone().expect("schema");
                let admin = pg_admin_url();
                let url = admin.split('?').next().unwrap_or(&admin).to_owned();
                let out = std::process::Command::new("pg_dump")
                    .args(["--data-only", "--schema", &schema, "--dbname", &url])
                    .output()
                    .expect("pg_dump must be installed for the at-rest test");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }
        }
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub fn clock_now(&self) -> kasho::clock::Timestamp {
        kasho::clock::Clock::now(self.clock.as_ref())
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&b).expect("json"))),
            None => req.body(Body::empty()),
        }
        .expect("request");
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        send_to(&self.router, req).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.request(Method::GET, path, Some(token), None).await
    }
}

/// Sends `req` to `router` (another instance, say) and decodes the answer.
pub async fn send_to(router: &Router, req: Request<Body>) -> Resp {
    {
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp {
            status,
            headers,
            body,
        }
    }
}

impl TestApp {
    /// Sends `requests` at once, each on its own task (so they really run in parallel on the
    /// runtime's threads); the answers in order.
    pub async fn send_parallel(&self, requests: Vec<Request<Body>>) -> Vec<Resp> {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|req| {
                let router = self.router.clone();
                tokio::spawn(async move {
                    let resp = router.oneshot(req).await.expect("infallible");
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    Resp {
                        status,
                        headers,
                        body,
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.expect("request task"));
        }
        out
    }

    /// A JSON POST request as [`send_parallel`](Self::send_parallel) takes it.
    pub fn post_request(path: &str, token: Option<&str>, body: &Value) -> Request<Body> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("request")
    }

    /// A POST with an `Idempotency-Key`.
    pub async fn post_with_key(&self, path: &str, token: &str, key: &str, body: Value) -> Resp {
        let mut req = Self::post_request(path, Some(token), &body);
        req.headers_mut().insert(
            "idempotency-key",
            key.parse().expect("a printable idempotency key"),
        );
        self.send(req).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn login(&self, tenant: Option<&str>, email: &str, password: &str) -> Resp {
        let mut body = json!({ "email": email, "password": password });
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        self.post("/v1/auth/login", None, body).await
    }

    /// Logs in and returns the access token, failing the test otherwise.
    pub async fn token(&self, tenant: Option<&str>, email: &str) -> String {
        let r = self.login(tenant, email, PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "login {email}: {r:?}");
        r.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Creates a platform admin directly in storage (as the CLI does) and signs it in.
    pub async fn platform_admin(&self) -> String {
        let email = format!("admin-{}@platform.test", uuid::Uuid::now_v7().simple());
        let hash = self.core.hasher.hash(&PASSWORD.into()).await.expect("hash");
        let user = NewUser {
            id: UserId::generate(),
            tenant_id: None,
            email_hash: kasho::service::users::email_hash(&self.core, None, &email),
            email: Email::parse(&email).expect("email").as_str().to_owned(),
            password_hash: hash,
            roles: vec![Role::PlatformAdmin],
            created_at: self.core.clock.now(),
        };
        self.core
            .store
            .create_user(&user, &[])
            .await
            .expect("create admin");
        self.token(None, &email).await
    }

    /// Creates a tenant through the API (stepping the admin up first if its sign-in is older
    /// than the step-up window), accepts its manager's invitation with [`PASSWORD`] and signs
    /// the manager in.
    pub async fn tenant(&self, admin: &str, slug: &str) -> TenantFixture {
        let manager_email = format!("manager@{slug}.test");
        let body = json!({
            "slug": slug, "name": format!("{slug} Ltd"), "currencies": ["USD", "NGN"],
            "manager": { "email": manager_email }
        });
        let r = self.post_stepping_up("/v1/tenants", admin, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "create tenant: {r:?}");
        let id = r.body["id"].as_str().expect("id").to_owned();
        let accepted = self.accept_invitation(&manager_email, PASSWORD).await;
        assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
        let login = self.login(Some(slug), &manager_email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{login:?}");
        let manager_token = login.body["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let me = self.get("/v1/me", &manager_token).await;
        TenantFixture {
            id,
            slug: slug.to_owned(),
            manager_id: me.body["user_id"].as_str().expect("user_id").to_owned(),
            manager_token,
        }
    }

    /// POSTs `body` with `token`; when the answer is `step_up_required`, steps the session up
    /// with [`PASSWORD`] and sends it again.
    pub async fn post_stepping_up(&self, path: &str, token: &str, body: Value) -> Resp {
        let r = self.post(path, Some(token), body.clone()).await;
        if r.code() != "step_up_required" {
            return r;
        }
        let up = self
            .post(
                "/v1/auth/step-up",
                Some(token),
                json!({ "password": PASSWORD }),
            )
            .await;
        assert_eq!(up.status, StatusCode::OK, "step-up: {up:?}");
        self.post(path, Some(token), body).await
    }

    /// Invites a user with `roles` into the manager's tenant and accepts the invitation with
    /// [`PASSWORD`]; returns (user id, email).
    pub async fn user(&self, t: &TenantFixture, roles: &[&str]) -> (String, String) {
        let email = format!(
            "{}-{}@{}.test",
            roles.join("-").to_lowercase(),
            uuid::Uuid::now_v7().simple(),
            t.slug
        );
        let r = self
            .post_stepping_up(
                "/v1/users",
                &t.manager_token,
                json!({ "email": email, "roles": roles }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "create user: {r:?}");
        let accepted = self.accept_invitation(&email, PASSWORD).await;
        assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
        (r.body["id"].as_str().expect("id").to_owned(), email)
    }

    /// Delivers the outbox into the development mailbox (`<data_dir>/mailbox/`) and takes the
    /// newest invitation sent to `email` out of it (the file is removed, as a person reads and
    /// deletes a mail): the token of its link.
    pub async fn invitation_token(&self, email: &str) -> String {
        let to = format!("To: <{email}>");
        let dir = self.data_dir.path().join("mailbox");
        for _ in 0..200 {
            kasho::service::mail::deliver_due(&self.core)
                .await
                .expect("mail delivery");
            let mut found: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .filter_map(|p| std::fs::read_to_string(&p).ok().map(|m| (p, m)))
                .filter(|(_, m)| m.contains(&to) && m.contains("/accept-invitation#token="))
                .collect();
            found.sort();
            if let Some((_, message)) = found.last() {
                let message = message.clone();
                for (p, _) in &found {
                    let _ = std::fs::remove_file(p);
                }
                let at = message.find("#token=").expect("link") + "#token=".len();
                return message[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
            }
            // Another task's delivery pass may hold the message: it lands in a moment.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no invitation for {email} reached the mailbox");
    }

    /// Accepts the invitation mailed to `email`, choosing `password`.
    pub async fn accept_invitation(&self, email: &str, password: &str) -> Resp {
        let token = self.invitation_token(email).await;
        self.post(
            "/v1/invitations/accept",
            None,
            json!({ "token": token, "password": password }),
        )
        .await
    }

    /// A signed-in user with `roles`.
    pub async fn user_token(&self, t: &TenantFixture, roles: &[&str]) -> (String, String) {
        let (id, email) = self.user(t, roles).await;
        (id, self.token(Some(&t.slug), &email).await)
    }

    /// Stores the tenant's security policy: the defaults with `f` applied.
    pub async fn set_policy(
        &self,
        t: &TenantFixture,
        f: impl FnOnce(&mut kasho::domain::security::SecurityPolicy),
    ) {
        let mut p = self.core.settings.default_policy.clone();
        f(&mut p);
        let tenant = kasho::ids::TenantId::parse(&t.id).expect("tenant id");
        self.core
            .store
            .put_security_policy(
                &tenant,
                &serde_json::to_string(&p).expect("policy json"),
                "test",
                self.clock_now(),
                &[],
            )
            .await
            .expect("store the policy");
        // As `try_raw_sql`: the store was written directly, not through the service.
        self.core.session_cache.forget_all();
    }

    /// Audit events of a chain, straight from storage, oldest first.
    pub async fn audit_chain(&self, chain: &str) -> Vec<kasho::domain::audit::AuditRecord> {
        self.core
            .store
            .audit_chain_after(chain, 0, 10_000)
            .await
            .expect("audit")
    }
}

/// Runs each listed test against SQLite and against PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::TestApp::new($crate::support::Backend::Sqlite).await;
                    super::$name(&app).await;
                    app.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::TestApp::new($crate::support::Backend::Postgres).await;
                    super::$name(&app).await;
                    app.cleanup().await;
                }
            )*
        }
    };
}

/// A new customer (no personal data) of `t` with an account in `currency`; the account's id.
pub async fn customer_account(app: &TestApp, t: &TenantFixture, currency: &str) -> String {
    let c = app
        .post("/v1/customers", Some(&t.manager_token), json!({}))
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let a = app
        .post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": c.body["id"], "currency": currency }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    a.body["id"].as_str().expect("account id").to_owned()
}
