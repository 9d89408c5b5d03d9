//! Ledger throughput benchmark over real HTTP.
//!
//! By default it starts a Kasho server in-process on 127.0.0.1 (SQLite in a temporary directory,
//! or a fresh PostgreSQL schema) and creates a platform admin in its store. With `--url` it
//! targets an already running Kasho server instead and signs in as an existing platform admin
//! (`--admin-email`, password from the environment variable `KASHO_BENCH_ADMIN_PASSWORD`). A
//! platform admin must use MFA: the benchmark enrols it in TOTP on its first sign-in and keeps
//! the secret in `--admin-totp-file` (mode 0600), from which later runs compute their codes; the
//! tenant's MANAGER it creates is enrolled the same way when the tenant's policy requires it.
//! Either way it then creates a tenant (its MANAGER invited, the invitation read from the
//! server's development mailbox and accepted: nobody sets another person's password) and N
//! funded accounts through the API and drives
//! authenticated single transfers (each with an Idempotency-Key) from C concurrent keep-alive
//! connections for T seconds, uniformly or on a few hot accounts (Zipf, s = 1). Every security
//! layer is on: token verification and session check, permission check, idempotency, audit
//! chain, durable commits (SQLite synchronous=FULL, PostgreSQL synchronous_commit=on).
//!
//!     cargo run --release --example ledger_bench -- --backend sqlite --clients 64 --seconds 10
//!     cargo run --release --example ledger_bench -- --backend postgres --profile zipf --json out.json
//!     KASHO_BENCH_ADMIN_PASSWORD=… cargo run --release --example ledger_bench -- \
//!         --url http://127.0.0.1:8080 --admin-email admin@example.com --admin-totp-file admin.totp
//!
//! After the run it prints where the time went, per layer, for the embedded server: parse (the
//! JSON body), auth (authentication, rate limits, permission), prepare (the service building
//! the ledger commands), and the writer's load, engine, write, audit and commit phases, in
//! microseconds of wall time per transfer (summed over concurrent work, so the layers that wait
//! show up as well as those that compute).
//!
//! With `KASHO_BENCH_REDIS_URL` (e.g. redis://127.0.0.1:6379) the in-process server keeps its
//! rate-limit buckets in that Redis, as several instances sharing them do.
//!
//! Prints transfers/s, latency percentiles and errors, then verifies the ledger's invariants over
//! the API as the tenant's MANAGER (the same check in both modes): every currency's posted
//! balances sum to zero, no account is below its floor, and every account listed exactly once.
//! Exits 1 if an invariant fails or any request errored, 2 on a usage error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitCode;
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

/// The environment variable that carries the platform admin's password in `--url` mode.
const PASSWORD_ENV: &str = "KASHO_BENCH_ADMIN_PASSWORD";

const USAGE: &str = "\
ledger_bench: Kasho ledger throughput over real HTTP

Usage:
  ledger_bench [--backend sqlite|postgres] [--pg URL] [OPTIONS]
      start a Kasho server in-process (SQLite in a temporary directory, or a fresh schema in the
      PostgreSQL database at --pg) and benchmark it
  KASHO_BENCH_ADMIN_PASSWORD=... ledger_bench --url http://HOST:PORT --admin-email EMAIL
                                             --admin-totp-file FILE [OPTIONS]
      benchmark an already running Kasho server, signing in as an existing platform admin
      (create one with `kasho admin create-platform-admin --email EMAIL`, password on stdin);
      the password is read from KASHO_BENCH_ADMIN_PASSWORD, never from a flag. Platform admins
      must use MFA: an admin not yet enrolled is enrolled in TOTP and its secret written to FILE
      (mode 0600); an enrolled one signs in with a code computed from the secret in FILE. Each
      run creates a new tenant (bench-<random>) on that server and leaves it there; its MANAGER
      enrols in TOTP too when the tenant's policy says so.

Options:
  --backend sqlite|postgres  embedded server's database (sqlite)
  --pg URL                   PostgreSQL for --backend postgres
                             (postgres://postgres@127.0.0.1:5432/test)
  --url http://HOST:PORT     target an external server instead of starting one
  --admin-email EMAIL        platform admin to sign in as (required with --url)
  --admin-totp-file FILE     with --url: the admin's TOTP secret (base32), written when the
                             benchmark enrols the admin, read when it is enrolled already
  --mailbox DIR              with --url: the server's development mailbox, where the tenant
                             manager's invitation lands (kasho-data/mailbox; the server must run
                             without smtp_url, on this machine)
  --clients N                concurrent keep-alive connections (64)
  --seconds N                how long to drive transfers (10)
  --accounts N               funded customer accounts, at least 2 (1000)
  --profile uniform|zipf     pick accounts uniformly, or Zipf s = 1: a few hot ones (uniform)
  --batch N                  transfers per request; above 1 uses POST /v1/transfers/batch (1)
  --json FILE                also write the figures as JSON
  -h, --help                 print this help

Exit status: 0 when every request succeeded and the invariants hold, 1 otherwise, 2 on a usage
error.";

enum Mode {
    /// Start a server in-process on this backend.
    Embedded { backend: String, pg_admin: String },
    /// Benchmark the server at this `http://` URL as this platform admin; the server writes
    /// its mail into `mailbox`.
    External {
        url: String,
        admin_email: String,
        mailbox: std::path::PathBuf,
        /// Where the admin's TOTP secret is kept between runs.
        admin_totp_file: Option<std::path::PathBuf>,
    },
}

impl Mode {
    /// How the run is labelled in the output (`embedded sqlite`, `embedded postgres`, the URL).
    fn label(&self) -> String {
        match self {
            Mode::Embedded { backend, .. } => format!("embedded {backend}"),
            Mode::External { url, .. } => url.clone(),
        }
    }
}

struct Options {
    mode: Mode,
    n_accounts: usize,
    clients: usize,
    seconds: u64,
    profile: String,
    batch: usize,
    json_out: Option<String>,
}

/// Parses the command line; `Ok(None)` means `--help` was asked for.
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    const VALUED: &[&str] = &[
        "--backend",
        "--pg",
        "--url",
        "--admin-email",
        "--admin-totp-file",
        "--mailbox",
        "--clients",
        "--seconds",
        "--accounts",
        "--profile",
        "--batch",
        "--json",
    ];
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            return Ok(None);
        }
        let Some(name) = VALUED.iter().find(|n| **n == a.as_str()) else {
            return Err(format!("unknown argument `{a}`"));
        };
        let Some(v) = it.next() else {
            return Err(format!("{name} needs a value"));
        };
        values.insert(name, v.clone());
    }
    let get = |name: &str, default: &str| {
        values
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    fn number<T: std::str::FromStr + PartialOrd>(v: &str, name: &str, min: T) -> Result<T, String> {
        v.parse::<T>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| format!("{name} `{v}` is not a whole number in range"))
    }

    let mode = match values.get("--url") {
        Some(url) => {
            for conflicting in ["--backend", "--pg"] {
                if values.contains_key(conflicting) {
                    return Err(format!(
                        "{conflicting} configures the embedded server; it cannot be combined with --url"
                    ));
                }
            }
            let Some(admin_email) = values.get("--admin-email").cloned() else {
                return Err(
                    "--url needs --admin-email (a platform admin of that server; the password \
                     comes from KASHO_BENCH_ADMIN_PASSWORD)"
                        .into(),
                );
            };
            Mode::External {
                url: url.trim_end_matches('/').to_owned(),
                admin_email,
                mailbox: get("--mailbox", "kasho-data/mailbox").into(),
                admin_totp_file: values.get("--admin-totp-file").map(Into::into),
            }
        }
        None => {
            if values.contains_key("--admin-email") {
                return Err(
                    "--admin-email is only used with --url (the embedded server creates its own admin)"
                        .into(),
                );
            }
            if values.contains_key("--mailbox") {
                return Err(
                    "--mailbox is only used with --url (the embedded server's mailbox is its own)"
                        .into(),
                );
            }
            if values.contains_key("--admin-totp-file") {
                return Err(
                    "--admin-totp-file is only used with --url (the embedded admin needs no MFA)"
                        .into(),
                );
            }
            let backend = get("--backend", "sqlite");
            if backend != "sqlite" && backend != "postgres" {
                return Err(format!(
                    "--backend `{backend}`: expected sqlite or postgres"
                ));
            }
            Mode::Embedded {
                backend,
                pg_admin: get("--pg", "postgres://postgres@127.0.0.1:5432/test"),
            }
        }
    };
    let profile = get("--profile", "uniform");
    if profile != "uniform" && profile != "zipf" {
        return Err(format!("--profile `{profile}`: expected uniform or zipf"));
    }
    Ok(Some(Options {
        mode,
        n_accounts: number(&get("--accounts", "1000"), "--accounts", 2)?,
        clients: number(&get("--clients", "64"), "--clients", 1)?,
        seconds: number(&get("--seconds", "10"), "--seconds", 1)?,
        profile,
        batch: number(&get("--batch", "1"), "--batch", 1)?,
        json_out: values.get("--json").cloned(),
    }))
}

/// Where the HTTP client connects, and the Host header it sends.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
}

impl Target {
    /// Resolves an `http://host[:port][/]` URL. The client speaks plain HTTP/1.1 only.
    async fn from_url(url: &str) -> Result<Target, String> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(format!(
                "--url {url}: https is not supported; the benchmark speaks plain HTTP/1.1 \
                 (point it at the server's own listener)"
            ));
        }
        let Some(rest) = lower
            .starts_with("http://")
            .then(|| &url["http://".len()..])
        else {
            return Err(format!("--url {url}: expected http://HOST:PORT"));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "--url {url}: expected http://HOST:PORT with no path"
            ));
        }
        let has_port = match authority.rsplit_once(':') {
            Some((_, p)) => !p.ends_with(']') && !p.is_empty(),
            None => false,
        };
        let with_port = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .map_err(|e| format!("--url {url}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url}: {with_port} resolves to no address"))?;
        Ok(Target {
            addr,
            host: authority.to_owned(),
        })
    }
}

/// A minimal HTTP/1.1 keep-alive client: enough for JSON requests with Content-Length.
/// After an I/O error or a `Connection: close` it reconnects on the next request.
struct Conn {
    target: Target,
    io: Option<BufReader<TcpStream>>,
}

impl Conn {
    async fn open(target: &Target) -> std::io::Result<Conn> {
        let mut c = Conn {
            target: target.clone(),
            io: None,
        };
        c.connect().await?;
        Ok(c)
    }

    async fn connect(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.io.is_none() {
            let s = TcpStream::connect(self.target.addr).await?;
            s.set_nodelay(true)?;
            self.io = Some(BufReader::new(s));
        }
        self.io
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not connected"))
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let result = self.exchange(method, path, token, key, body).await;
        if result.is_err() {
            self.io = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.target.host,
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
        let io = self.connect().await?;
        io.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if io.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                    close = true;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(std::io::Error::other(format!(
                        "unsupported Transfer-Encoding: {v}"
                    )));
                }
            }
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        if close {
            self.io = None;
        }
        Ok((status, serde_json::from_slice(&buf).unwrap_or(Value::Null)))
    }

    /// A set-up or check request that must answer `want`; anything else is a clear error.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        want: u16,
    ) -> Result<Value, String> {
        let (status, reply) = self
            .send(method, path, token, None, body)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if status == want {
            Ok(reply)
        } else {
            Err(format!(
                "{method} {path}: expected HTTP {want}, got {status}: {reply}"
            ))
        }
    }

    /// Signs in (to a tenant, or as a platform user without one) and returns the access token.
    /// A user with MFA answers the challenge with a code of `mfa`; a user whose role must use
    /// MFA and who has not enrolled yet is enrolled in TOTP first (the secret and recovery
    /// codes go to `mfa`), as a person would at a first sign-in.
    async fn login(
        &mut self,
        tenant: Option<&str>,
        email: &str,
        password: &str,
        mfa: &mut SecondFactor,
    ) -> Result<String, String> {
        let mut body = json!({ "email": email, "password": password });
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let reply = self
            .call("POST", "/v1/auth/login", None, Some(&body), 200)
            .await
            .map_err(|e| format!("cannot sign in as {email}: {e}"))?;
        if reply["mfa_required"] == json!(true) {
            let challenge = reply["mfa_token"]
                .as_str()
                .ok_or_else(|| format!("login as {email}: no mfa_token in {reply}"))?;
            return self.second_step(email, challenge, mfa).await;
        }
        let token = reply["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("login as {email}: no access_token in {reply}"))?;
        let me = self.call("GET", "/v1/me", Some(&token), None, 200).await?;
        if me["mfa_enrolment_required"] == json!(true) {
            self.enrol(email, &token, mfa).await?;
        }
        Ok(token)
    }

    /// Answers a sign-in's MFA challenge: a TOTP code, or a recovery code when this run already
    /// used the current step's code. A code refused because another run took its step is
    /// retried once with the next step's.
    async fn second_step(
        &mut self,
        email: &str,
        challenge: &str,
        mfa: &mut SecondFactor,
    ) -> Result<String, String> {
        let mut retried = false;
        loop {
            let code = mfa.code(email).await?;
            let (status, reply) = self
                .send(
                    "POST",
                    "/v1/auth/mfa",
                    None,
                    None,
                    Some(&json!({ "mfa_token": challenge, "code": code })),
                )
                .await
                .map_err(|e| format!("POST /v1/auth/mfa: {e}"))?;
            if status == 200 {
                return reply["access_token"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("MFA sign-in as {email}: no access_token in {reply}"));
            }
            if status != 401 || retried {
                return Err(format!(
                    "cannot sign in as {email}: POST /v1/auth/mfa: expected HTTP 200, got {status}: {reply}"
                ));
            }
            retried = true;
            // The server may close the connection after a refused code: start a new one.
            self.io = None;
        }
    }

    /// Enrols the signed-in user in TOTP MFA and confirms it with a code.
    async fn enrol(
        &mut self,
        email: &str,
        token: &str,
        mfa: &mut SecondFactor,
    ) -> Result<(), String> {
        if let Some(path) = &mfa.keep {
            // Fail before enrolling rather than enrol a secret nobody can use again.
            if !path
                .parent()
                .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
            {
                return Err(format!(
                    "--admin-totp-file {}: its folder does not exist",
                    path.display()
                ));
            }
        } else if mfa.must_keep {
            return Err(format!(
                "{email} must enrol in MFA: give --admin-totp-file FILE, where the benchmark \
                 keeps its TOTP secret for later runs"
            ));
        }
        let started = self
            .call(
                "POST",
                "/v1/me/mfa/totp",
                Some(token),
                Some(&json!({})),
                201,
            )
            .await?;
        let secret = started["secret"]
            .as_str()
            .ok_or_else(|| format!("POST /v1/me/mfa/totp: no secret in {started}"))?
            .to_owned();
        mfa.set_secret(&secret)?;
        // Kept before it is confirmed: an active factor whose secret is lost would lock the
        // benchmark out of this admin.
        if let Some(path) = &mfa.keep {
            write_secret(path, &secret)?;
        }
        let code = mfa.code(email).await?;
        let confirmed = self
            .call(
                "POST",
                "/v1/me/mfa/totp/confirm",
                Some(token),
                Some(&json!({ "code": code })),
                200,
            )
            .await?;
        mfa.recovery = confirmed["recovery_codes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        if let Some(path) = &mfa.keep {
            eprintln!(
                "{email} enrolled in TOTP MFA; its secret is in {} for later runs",
                path.display()
            );
        }
        Ok(())
    }
}

/// A user's TOTP second factor as the benchmark knows it.
#[derive(Default)]
struct SecondFactor {
    /// The secret's key bytes (decoded from base32).
    key: Option<Vec<u8>>,
    /// The last TOTP step this run used: the server accepts each step's code once.
    last_step: i64,
    /// Unused recovery codes from this run's enrolment.
    recovery: Vec<String>,
    /// Where an enrolment writes the secret (the platform admin's, with `--admin-totp-file`).
    keep: Option<std::path::PathBuf>,
    /// Enrolling without `keep` would lose the secret (the platform admin of `--url`).
    must_keep: bool,
}

impl SecondFactor {
    /// The platform admin's factor in `--url` mode: the secret in `file`, if it holds one.
    fn from_file(file: Option<&std::path::Path>) -> Result<SecondFactor, String> {
        let mut f = SecondFactor {
            keep: file.map(std::path::Path::to_path_buf),
            must_keep: true,
            ..SecondFactor::default()
        };
        if let Some(path) = file
            && path.exists()
        {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--admin-totp-file {}: {e}", path.display()))?;
            f.set_secret(text.trim())
                .map_err(|e| format!("--admin-totp-file {}: {e}", path.display()))?;
        }
        Ok(f)
    }

    fn set_secret(&mut self, base32: &str) -> Result<(), String> {
        self.key = Some(base32_decode(base32).ok_or("the TOTP secret is not base32")?);
        Ok(())
    }

    /// A code not used before by this run: the current step's TOTP code, else a recovery code,
    /// else the next step's code once it begins.
    async fn code(&mut self, email: &str) -> Result<String, String> {
        let Some(key) = self.key.clone() else {
            return Err(format!(
                "{email} signs in with MFA: give its TOTP secret (base32) in --admin-totp-file"
            ));
        };
        loop {
            let step = kasho::service::mfa::step_at(kasho::clock::Clock::now(&SystemClock));
            if step > self.last_step {
                self.last_step = step;
                return Ok(kasho::service::mfa::totp_code(&key, step));
            }
            if let Some(code) = self.recovery.pop() {
                return Ok(code);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// RFC 4648 base32 without padding, as Kasho shows TOTP secrets.
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buf, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Writes a TOTP secret to `path`, readable by its owner only.
fn write_secret(path: &std::path::Path, secret: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("--admin-totp-file {}: {e}", path.display()))?;
    writeln!(f, "{secret}").map_err(|e| format!("--admin-totp-file {}: {e}", path.display()))
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

/// The token of the newest invitation to `email` in the server's mailbox folder, waiting up to
/// a minute for the server's delivery pass to write it.
async fn invitation_token(mailbox: &std::path::Path, email: &str) -> Result<String, String> {
    let to = format!("To: <{email}>");
    for _ in 0..600 {
        let mut mails: Vec<std::path::PathBuf> = std::fs::read_dir(mailbox)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        mails.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        mails.sort();
        for path in mails.iter().rev() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let (true, Some(at)) = (text.contains(&to), text.find("/accept-invitation#token=")) {
                let rest = &text[at + "/accept-invitation#token=".len()..];
                return Ok(rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "no invitation for {email} reached {} within a minute (the server must run without \
         smtp_url; give its mailbox folder with --mailbox)",
        mailbox.display()
    ))
}

/// `n` bytes from the system CSPRNG, hex-encoded (passwords and names of bench objects).
fn random_hex(n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "the system random generator failed")?;
    Ok(hex::encode(bytes))
}

/// The in-process server of the embedded mode, and what to clean up after it.
struct Embedded {
    target: Target,
    /// Where its mail delivery writes (`<data_dir>/mailbox`).
    mailbox: std::path::PathBuf,
    admin_email: String,
    admin_password: String,
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Embedded {
    async fn start(backend: &str, pg_admin: &str) -> Result<Embedded, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let (url, pg) = if backend == "postgres" {
            let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
            let pool = sqlx::PgPool::connect(pg_admin)
                .await
                .map_err(|e| format!("--pg {pg_admin}: {e}"))?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&pool)
                .await
                .map_err(|e| format!("CREATE SCHEMA {schema}: {e}"))?;
            (
                format!("{pg_admin}?options[search_path]={schema}"),
                Some((pg_admin.to_owned(), schema)),
            )
        } else {
            (format!("sqlite://{}/kasho.db", dir.path().display()), None)
        };
        let data_dir = dir.path().display().to_string();
        // The benchmark signs in as a scripted platform admin and manager; its embedded server
        // does not require them to enrol in MFA (what is measured is the ledger).
        // With KASHO_BENCH_REDIS_URL the rate-limit buckets live in that Redis (as when several
        // instances share them), under a key prefix of this run's own.
        let redis = std::env::var("KASHO_BENCH_REDIS_URL").ok();
        let prefix = format!("kasho-bench:{}:", uuid::Uuid::now_v7().simple());
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(r) = redis.as_deref() {
            pairs.extend([("redis_url", r), ("redis_key_prefix", prefix.as_str())]);
        }
        pairs.extend([
            ("data_dir", data_dir.as_str()),
            ("database_url", url.as_str()),
            ("mfa_required_roles", ""),
            // What is measured is the server's work, not its rate limits (one client address
            // and one credential send every request here).
            ("rate_limit_ip", "10000000/60"),
            ("rate_limit_credential", "10000000/60"),
            ("rate_limit_tenant", "10000000/60"),
            ("rate_limit_login", "10000000/60"),
            ("rate_limit_refresh", "10000000/60"),
        ]);
        let config = Config::from_pairs(&pairs).map_err(|e| e.to_string())?;
        let core = kasho::app::build_core(&config, Arc::new(SystemClock), true)
            .await
            .map_err(|e| e.to_string())?;
        match core.limits.redis_reachable().await {
            None => eprintln!("rate limits: in process"),
            Some(true) => eprintln!("rate limits: shared in Redis"),
            Some(false) => {
                return Err("KASHO_BENCH_REDIS_URL is set but Redis is unreachable".into());
            }
        }
        let app = kasho::http::router(core.clone(), config.max_body_bytes);
        // Mail delivery, as `kasho serve` runs it (more often: the benchmark waits for the
        // manager's invitation).
        let mailer = core.clone();
        tokio::spawn(async move {
            loop {
                let _ = kasho::service::mail::deliver_due(&mailer).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });

        // The only step that bypasses the API: platform admins are created out of band (the
        // `kasho admin create-platform-admin` CLI in production).
        let admin_email = "bench@platform.test".to_owned();
        let admin_password = random_hex(16)?;
        let user = NewUser {
            id: UserId::generate(),
            tenant_id: None,
            email_hash: kasho::service::users::email_hash(&core, None, &admin_email),
            email: Email::parse(&admin_email)?.as_str().to_owned(),
            password_hash: core
                .hasher
                .hash(&admin_password.as_str().into())
                .await
                .map_err(|e| e.to_string())?,
            roles: vec![Role::PlatformAdmin],
            created_at: kasho::clock::Clock::now(&SystemClock),
        };
        core.store
            .create_user(&user, &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(Embedded {
            target: Target {
                addr,
                host: addr.to_string(),
            },
            mailbox: dir.path().join("mailbox"),
            admin_email,
            admin_password,
            pg,
            _dir: dir,
        })
    }

    async fn cleanup(self) {
        if let Some((pg_admin, schema)) = self.pg {
            let dropped = match sqlx::PgPool::connect(&pg_admin).await {
                Ok(pool) => {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                        .execute(&pool)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = dropped {
                eprintln!("could not drop schema {schema}: {e}");
            }
        }
    }
}

/// The ledger's invariants as read back over the API.
struct Invariants {
    /// Posted balances per currency (system accounts included).
    sums: BTreeMap<String, i128>,
    /// Accounts whose available balance is below minus their overdraft limit.
    below_floor: Vec<String>,
    /// Accounts listed (customer and system).
    listed: usize,
    system: usize,
    /// Every account the benchmark opened was listed, and none twice.
    complete: bool,
}

impl Invariants {
    fn balanced(&self) -> bool {
        !self.sums.is_empty() && self.sums.values().all(|s| *s == 0)
    }
    fn within_floor(&self) -> bool {
        self.below_floor.is_empty()
    }
    fn hold(&self) -> bool {
        self.balanced() && self.within_floor() && self.complete
    }
}

/// Pages through `GET /v1/accounts` as the tenant's MANAGER (who sees the system accounts too).
async fn check_invariants(
    c: &mut Conn,
    token: &str,
    opened: &[String],
) -> Result<Invariants, String> {
    let field = |a: &Value, name: &str| {
        a[name]
            .as_i64()
            .map(i128::from)
            .ok_or_else(|| format!("account without a numeric `{name}`: {a}"))
    };
    let mut inv = Invariants {
        sums: BTreeMap::new(),
        below_floor: Vec::new(),
        listed: 0,
        system: 0,
        complete: true,
    };
    let mut seen = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => "/v1/accounts?limit=100".to_owned(),
            Some(id) => format!(
                "/v1/accounts?limit=100&starting_after={}",
                form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
            ),
        };
        let page = c.call("GET", &path, Some(token), None, 200).await?;
        let data = page["data"]
            .as_array()
            .ok_or_else(|| format!("GET {path}: no `data` list in {page}"))?;
        for a in data {
            let id = a["id"]
                .as_str()
                .ok_or_else(|| format!("account without an id: {a}"))?;
            let currency = a["currency"]
                .as_str()
                .ok_or_else(|| format!("account without a currency: {a}"))?;
            if !seen.insert(id.to_owned()) {
                eprintln!("account {id} listed twice");
                inv.complete = false;
            }
            inv.listed += 1;
            if a["customer_id"].is_null() {
                inv.system += 1;
            }
            *inv.sums.entry(currency.to_owned()).or_default() += field(a, "posted_balance")?;
            if field(a, "available_balance")? < -field(a, "overdraft_limit")? {
                inv.below_floor.push(id.to_owned());
            }
        }
        if page["has_more"] != json!(true) {
            break;
        }
        let last = data
            .last()
            .and_then(|a| a["id"].as_str())
            .ok_or_else(|| format!("GET {path}: has_more on an empty page"))?;
        if after.as_deref() == Some(last) {
            return Err(format!("GET {path}: the cursor does not advance"));
        }
        after = Some(last.to_owned());
    }
    let missing = opened.iter().filter(|id| !seen.contains(*id)).count();
    if missing > 0 {
        eprintln!("{missing} of the benchmark's accounts were not listed");
        inv.complete = false;
    }
    if !inv.balanced() {
        eprintln!("posted balances per currency: {:?}", inv.sums);
    }
    if !inv.within_floor() {
        eprintln!("accounts below their floor: {:?}", inv.below_floor);
    }
    Ok(inv)
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let opts = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("ledger_bench: {msg}\n(ledger_bench --help lists the flags)");
            return ExitCode::from(2);
        }
    };

    let (embedded, target, admin_email, admin_password, mailbox, admin_mfa) = match &opts.mode {
        Mode::Embedded { backend, pg_admin } => match Embedded::start(backend, pg_admin).await {
            Ok(e) => {
                let (t, m, p, b) = (
                    e.target.clone(),
                    e.admin_email.clone(),
                    e.admin_password.clone(),
                    e.mailbox.clone(),
                );
                (Some(e), t, m, p, b, SecondFactor::default())
            }
            Err(msg) => {
                eprintln!("ledger_bench: cannot start the embedded server: {msg}");
                return ExitCode::FAILURE;
            }
        },
        Mode::External {
            url,
            admin_email,
            mailbox,
            admin_totp_file,
        } => {
            let password = match std::env::var(PASSWORD_ENV) {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    eprintln!(
                        "ledger_bench: --url needs the platform admin's password in the \
                         environment variable {PASSWORD_ENV} (it is never taken from a flag)"
                    );
                    return ExitCode::from(2);
                }
            };
            let admin_mfa = match SecondFactor::from_file(admin_totp_file.as_deref()) {
                Ok(f) => f,
                Err(msg) => {
                    eprintln!("ledger_bench: {msg}");
                    return ExitCode::from(2);
                }
            };
            match Target::from_url(url).await {
                Ok(t) => (
                    None,
                    t,
                    admin_email.clone(),
                    password,
                    mailbox.clone(),
                    admin_mfa,
                ),
                Err(msg) => {
                    eprintln!("ledger_bench: {msg}");
                    return ExitCode::from(2);
                }
            }
        }
    };

    let result = run(
        &opts,
        &target,
        (&admin_email, &admin_password, admin_mfa),
        &mailbox,
    )
    .await;
    if let Some(e) = embedded {
        e.cleanup().await;
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("ledger_bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Set-up, load and invariant check, all over HTTP. `Ok(false)`: an invariant failed or a
/// request errored.
async fn run(
    opts: &Options,
    target: &Target,
    (admin_email, admin_password, mut admin_mfa): (&str, &str, SecondFactor),
    mailbox: &std::path::Path,
) -> Result<bool, String> {
    let Options {
        n_accounts,
        clients,
        seconds,
        batch,
        ..
    } = *opts;
    let mode = opts.mode.label();
    let profile = opts.profile.clone();

    // Set-up through the API.
    let mut c = Conn::open(target)
        .await
        .map_err(|e| format!("cannot connect to {mode} ({}): {e}", target.addr))?;
    let admin = c
        .login(None, admin_email, admin_password, &mut admin_mfa)
        .await?;
    // A fresh tenant each run, so an external server can be benchmarked again and again.
    let slug = format!("bench-{}", random_hex(6)?);
    // The manager's own address per run: its invitation is found in the mailbox by it.
    let manager_email = format!("m@{slug}.test");
    let manager_email = manager_email.as_str();
    let manager_password = random_hex(16)?;
    // Enrolled at its first sign-in when the tenant's policy requires MFA of managers.
    let mut manager_mfa = SecondFactor::default();
    let tenant = c
        .call(
            "POST",
            "/v1/tenants",
            Some(&admin),
            Some(
                &json!({ "slug": slug, "name": "Bench", "currencies": ["USD"],
                "manager": { "email": manager_email } }),
            ),
            201,
        )
        .await?;
    if matches!(opts.mode, Mode::External { .. }) {
        eprintln!(
            "tenant {slug} ({}) created on {mode}; it stays there",
            tenant["id"].as_str().unwrap_or("?")
        );
    }
    let invitation = invitation_token(mailbox, manager_email).await?;
    c.call(
        "POST",
        "/v1/invitations/accept",
        None,
        Some(&json!({ "token": invitation, "password": manager_password })),
        200,
    )
    .await?;
    let token = c
        .login(
            Some(&slug),
            manager_email,
            &manager_password,
            &mut manager_mfa,
        )
        .await?;
    let t0 = Instant::now();
    let mut accounts = Vec::with_capacity(n_accounts);
    for _ in 0..n_accounts {
        let cus = c
            .call("POST", "/v1/customers", Some(&token), Some(&json!({})), 201)
            .await?;
        let acc = c
            .call(
                "POST",
                "/v1/accounts",
                Some(&token),
                Some(&json!({ "customer_id": cus["id"], "currency": "USD" })),
                201,
            )
            .await?;
        let id = acc["id"]
            .as_str()
            .ok_or_else(|| format!("POST /v1/accounts: no id in {acc}"))?
            .to_owned();
        c.call(
            "POST",
            "/v1/deposits",
            Some(&token),
            Some(&json!({ "account_id": id, "amount": 10_000_000, "currency": "USD" })),
            201,
        )
        .await?;
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
    let phases_before = kasho::observability::phases::snapshot();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (accounts, cdf, token, profile, target) = (
            accounts.clone(),
            cdf.clone(),
            token.clone(),
            profile.clone(),
            target.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn { target, io: None };
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
                let sent = if batch == 1 {
                    conn.send("POST", "/v1/transfers", Some(&token), Some(&key), Some(&transfers[0])).await
                } else {
                    conn.send("POST", "/v1/transfers/batch", Some(&token), Some(&key), Some(&json!({ "transfers": transfers }))).await
                };
                let Ok((status, reply)) = sent else {
                    // Connection lost (counted, then reconnected on the next request).
                    errors += batch as u64;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
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
        let (l, o, r, e) = t.await.map_err(|e| format!("client task failed: {e}"))?;
        lat.extend(l);
        ok += o;
        refused += r;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Where the time went, per layer (embedded server only: the counters are this process's).
    // Wall time summed over everything running at once, per transfer answered.
    let answered = (ok + refused).max(1) as f64;
    let phases: Vec<(&str, f64)> = kasho::observability::phases::snapshot()
        .iter()
        .zip(phases_before.iter())
        .map(|((p, after), (_, before))| {
            (p.as_str(), after.saturating_sub(*before) as f64 / answered)
        })
        .collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let tps = ok as f64 / elapsed;
    let what = match &opts.mode {
        Mode::Embedded { backend, .. } => format!("backend {backend}"),
        Mode::External { url, .. } => format!("server {url}"),
    };
    println!("{what}, profile {profile}, {clients} clients, {n_accounts} accounts, {elapsed:.1} s");
    println!(
        "transfers/s {tps:.0}  (posted {ok}, refused {refused}, errors {errors})  latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );

    if matches!(opts.mode, Mode::Embedded { .. }) {
        let line: Vec<String> = phases
            .iter()
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect();
        println!(
            "per transfer, µs of wall time summed over concurrent work: {}",
            line.join("  ")
        );
    }

    // Invariants, over the API as the MANAGER: the same check for an embedded or external server.
    // A fresh sign-in, in case a long run outlived the access token.
    let mut c = Conn::open(target)
        .await
        .map_err(|e| format!("cannot connect to {mode} ({}): {e}", target.addr))?;
    let token = c
        .login(
            Some(&slug),
            manager_email,
            &manager_password,
            &mut manager_mfa,
        )
        .await?;
    let inv = check_invariants(&mut c, &token, &accounts).await?;
    let (balanced, floor_ok) = (inv.balanced(), inv.within_floor());
    println!(
        "invariants: balances sum to zero: {balanced}; every account within its floor: {floor_ok}; \
         listing complete: {} ({} accounts, {} system)",
        inv.complete, inv.listed, inv.system
    );
    if let Some(path) = &opts.json_out {
        let backend = match &opts.mode {
            Mode::Embedded { backend, .. } => json!(backend),
            Mode::External { .. } => Value::Null,
        };
        let out = json!({ "mode": mode, "backend": backend, "tenant": slug, "profile": profile,
            "clients": clients, "accounts": n_accounts, "seconds": elapsed,
            "transfers_per_second": tps, "posted": ok, "refused": refused, "errors": errors,
            "batch": batch, "latency_ms": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
            "phases_us_per_transfer": matches!(opts.mode, Mode::Embedded { .. })
                .then(|| phases.iter().map(|(n, us)| (n.to_string(), json!(us))).collect::<serde_json::Map<_, _>>()),
            "invariants": { "balanced": balanced, "within_floor": floor_ok,
                "listing_complete": inv.complete, "accounts_checked": inv.listed } });
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("--json {path}: {e}"))?;
    }
    Ok(inv.hold() && errors == 0)
}
