//! The `kasho` command line: `serve`, `migrate`, `admin create-platform-admin`,
//! `admin invitation-link`, `audit verify`, `config check`, `retention run`, `sign`,
//! `dev-cert`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};
use crate::domain::audit::{ActorType, NewAuditEvent, Outcome};
use crate::domain::authz::Role;
use crate::domain::values::Email;
use crate::ids::UserId;
use crate::store::{NewUser, StoreError};

#[derive(Parser)]
#[command(
    name = "kasho",
    version,
    about = "Kasho: a multi-tenant, security-first fintech core"
)]
struct Cli {
    /// Configuration file (default: $KASHO_CONFIG, else ./kasho.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides KASHO_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<String>,
    /// Database URL (overrides KASHO_DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// development or production (overrides KASHO_ENV).
    #[arg(long, global = true)]
    env: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (applies pending migrations first).
    Serve {
        /// host:port (overrides KASHO_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Platform administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The key hierarchy: status and rotation (safe while servers run).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Data retention.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Sign an API-token request as the server checks it: prints the canonical request and
    /// the Kasho-Timestamp, Kasho-Nonce and Kasho-Signature headers (offline; for integrators
    /// checking their own signing code).
    Sign(SignArgs),
    /// Print the OpenAPI document served at `/v1/openapi.json` (offline; `scripts/openapi-validate`
    /// checks it with openapi-spec-validator).
    Openapi,
    /// DEVELOPMENT ONLY: write a self-signed TLS certificate (ECDSA P-256, 90 days) for
    /// localhost, 127.0.0.1 and ::1 (plus --host names) as cert.pem and key.pem, and print the
    /// KASHO_TLS_CERT_FILE / KASHO_TLS_KEY_FILE lines to serve HTTPS with it. Nothing vouches
    /// for it; production uses a certificate from a real CA.
    DevCert {
        /// Directory to write cert.pem and key.pem into (created if missing).
        #[arg(long, default_value = "kasho-data/tls")]
        out_dir: PathBuf,
        /// An extra host name or IP address the certificate is valid for (repeatable).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Replace cert.pem and key.pem if they exist.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct SignArgs {
    /// Refused: a secret given as an argument is visible to every local user in `ps` and kept
    /// in shell history. Use --secret-env, --secret-file or --secret-stdin.
    #[arg(long, hide = true, value_name = "REFUSED")]
    secret: Option<String>,
    /// Read the signing secret (`kasho_sig_…`, issued with the token; for a token created
    /// before signing secrets existed and not rotated since, its bearer secret `kasho_…`) from
    /// this environment variable.
    #[arg(long, conflicts_with_all = ["secret_stdin", "secret_file"])]
    secret_env: Option<String>,
    /// Read the secret from the first line of this file (keep it mode 0600).
    #[arg(long, conflicts_with = "secret_stdin")]
    secret_file: Option<PathBuf>,
    /// Read the secret from the first line of standard input.
    #[arg(long)]
    secret_stdin: bool,
    /// The HTTP method.
    #[arg(long)]
    method: String,
    /// The path exactly as sent, without the query (e.g. /v1/transfers).
    #[arg(long)]
    path: String,
    /// The raw query string, without `?` (e.g. 'limit=10&starting_after=trf_…').
    #[arg(long)]
    query: Option<String>,
    /// The body, exactly as sent.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// A file holding the body, exactly as sent.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Unix seconds (default: now).
    #[arg(long)]
    timestamp: Option<String>,
    /// 16 to 128 of A-Z a-z 0-9 - . _ ~ (default: 32 random hex digits).
    #[arg(long)]
    nonce: Option<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Show master key versions and data keys by status.
    Status,
    /// Add a master key version and rewrap every data key under it (resumes an interrupted
    /// rotation).
    RotateMaster,
    /// Give a tenant a new data key and re-encrypt its data under it in batches.
    RotateTenant {
        /// The tenant's slug.
        slug: String,
    },
    /// Give a tenant a new blind-index (search) key: every customer is re-indexed under it
    /// before the old version is retired, and searches keep finding everyone meanwhile on every
    /// instance (resumes an interrupted rotation).
    RotateIndex {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
    },
    /// Make the configured JWT signing key the one this database expects (after replacing the
    /// key on purpose; access tokens signed by the old key stop working).
    AdoptJwtKey,
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Purge what is past retention now (as `kasho serve` does periodically) and print the counts.
    Run,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a platform admin; the password is read from standard input (from a terminal,
    /// without echo; or piped in).
    CreatePlatformAdmin {
        #[arg(long)]
        email: String,
    },
    /// When mail cannot reach an invited user: issue a fresh invitation link (valid 72 hours)
    /// and print it, for handing over by another channel. Earlier links stop working; the
    /// issue is audited in the tenant's chain and raises an `invitation_link_issued` security
    /// event.
    InvitationLink {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        /// The invited user's email.
        email: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every audit hash chain; exits non-zero naming the first bad record.
    Verify,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and show each value with its source (secrets hidden).
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Signing is offline: it needs no configuration, keys or database.
    if let Command::Sign(args) = &cli.command {
        return match sign(args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("kasho sign: {msg}");
                ExitCode::from(2)
            }
        };
    }
    // So is the API's contract.
    if let Command::Openapi = &cli.command {
        return match serde_json::to_string_pretty(&crate::http::openapi::document()) {
            Ok(doc) => {
                println!("{doc}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kasho openapi: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // A development certificate is offline too.
    if let Command::DevCert {
        out_dir,
        hosts,
        force,
    } = &cli.command
    {
        return match dev_cert(out_dir, hosts, *force) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("kasho dev-cert: {msg}");
                ExitCode::FAILURE
            }
        };
    }
    let mut flags: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &cli.data_dir {
        flags.push(("data_dir", v.clone()));
    }
    if let Some(v) = &cli.database_url {
        flags.push(("database_url", v.clone()));
    }
    if let Some(v) = &cli.env {
        flags.push(("env", v.clone()));
    }
    if let Command::Serve { listen: Some(l) } = &cli.command {
        flags.push(("listen", l.clone()));
    }
    // `config check` lists every insecure setting; every other command refuses to run with one.
    let checking = matches!(cli.command, Command::Config { .. });
    let loaded = if checking {
        Config::load_unchecked(cli.config.as_deref(), &flags)
    } else {
        Config::load(cli.config.as_deref(), &flags)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kasho: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    if !checking {
        for w in config.warnings() {
            eprintln!("kasho: WARNING: insecure setting {w}");
            tracing::warn!(
                key = w.key,
                env = config.env.as_str(),
                "insecure setting: {w}"
            );
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kasho: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { .. } => crate::app::serve(config).await.map_err(|e| e.to_string()),
            Command::Migrate => migrate(&config).await,
            Command::Admin {
                command: AdminCommand::CreatePlatformAdmin { email },
            } => create_platform_admin(&config, &email).await,
            Command::Admin {
                command: AdminCommand::InvitationLink { tenant, email },
            } => invitation_link(&config, &tenant, &email).await,
            Command::Audit {
                command: AuditCommand::Verify,
            } => audit_verify(&config).await,
            Command::Config {
                command: ConfigCommand::Check,
            } => config_check(&config),
            Command::Keys { command } => keys_command(&config, command).await,
            Command::Retention {
                command: RetentionCommand::Run,
            } => retention_run(&config).await,
            Command::Sign(_) | Command::Openapi | Command::DevCert { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("kasho: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `kasho dev-cert`: writes the certificate and key, refusing to replace them without `force`.
fn dev_cert(out_dir: &std::path::Path, hosts: &[String], force: bool) -> Result<String, String> {
    let cert_path = out_dir.join("cert.pem");
    let key_path = out_dir.join("key.pem");
    if !force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(format!(
                    "{} exists; pass --force to replace it (a server watching it picks up the new one)",
                    p.display()
                ));
            }
        }
    }
    let cert = crate::tls::dev_cert(hosts)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    // The key first: a watching server only reloads a pair that fits.
    crate::tls::write_replacing(&key_path, cert.key_pem.as_bytes(), 0o600)
        .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
    crate::tls::write_replacing(&cert_path, cert.cert_pem.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    Ok(format!(
        "# DEVELOPMENT ONLY: a self-signed certificate that nothing vouches for; clients must be\n\
         # told to trust {cert} explicitly (curl --cacert). Never use it in production.\n\
         # Valid {days} days for: {names}\n\
         # Private key (mode 0600): {key}\n\
         KASHO_TLS_CERT_FILE={cert}\n\
         KASHO_TLS_KEY_FILE={key}\n",
        cert = abs(&cert_path).display(),
        key = abs(&key_path).display(),
        days = cert.days,
        names = cert.names.join(", "),
    ))
}

/// `kasho sign`: the canonical request and the three headers.
fn sign(a: &SignArgs) -> Result<String, String> {
    use crate::domain::signing;
    // Secrets come only from the environment, a file or standard input: an argument would be
    // visible to every local user in the process list and kept in shell history.
    if a.secret.is_some() {
        return Err(
            "--secret is refused: a secret on the command line is visible to every \
                    local user in `ps` and stays in shell history; give it with --secret-env VAR, \
                    --secret-file PATH or --secret-stdin (and rotate this one if it was real)"
                .into(),
        );
    }
    let secret = zeroize::Zeroizing::new(match (&a.secret_env, &a.secret_file, a.secret_stdin) {
        (Some(var), _, _) => {
            std::env::var(var).map_err(|_| format!("the environment variable {var} is not set"))?
        }
        (None, Some(path), _) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            );
            text.lines().next().unwrap_or("").trim().to_owned()
        }
        (None, None, true) => {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the secret from standard input: {e}"))?;
            line.trim().to_owned()
        }
        (None, None, false) => {
            return Err(
                "give the secret with --secret-env VAR, --secret-file PATH or --secret-stdin"
                    .into(),
            );
        }
    });
    if !crate::service::api_tokens::is_api_token(&secret) {
        return Err(
            "the secret must be a token's signing secret (it starts with kasho_sig_)".into(),
        );
    }
    let body: Vec<u8> = match (&a.body, &a.body_file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?
        }
        (None, None) => Vec::new(),
    };
    let timestamp = match &a.timestamp {
        Some(t) => t.clone(),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs()
            .to_string(),
    };
    signing::parse_timestamp(&timestamp)
        .map_err(|_| "--timestamp must be unix seconds".to_owned())?;
    let nonce = match &a.nonce {
        Some(n) => n.clone(),
        None => hex::encode(
            crate::crypto::random_bytes::<16>().map_err(|_| "no randomness".to_owned())?,
        ),
    };
    signing::check_nonce(&nonce)
        .map_err(|_| "--nonce must be 16 to 128 of A-Z a-z 0-9 - . _ ~".to_owned())?;
    if !a.path.starts_with('/') || a.path.contains('?') {
        return Err("--path must start with / and hold no query (use --query)".into());
    }
    let canonical = signing::canonical_request(&signing::RequestParts {
        method: &a.method,
        path: &a.path,
        query: a.query.as_deref(),
        timestamp: &timestamp,
        nonce: &nonce,
        body: &body,
    });
    Ok(format!(
        "# canonical request (six lines, joined by \\n, no trailing newline)\n{canonical}\n\
         # headers\n\
         Kasho-Timestamp: {timestamp}\n\
         Kasho-Nonce: {nonce}\n\
         Kasho-Signature: {}\n",
        signing::signature_header(&secret, &canonical)
    ))
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn migrate(config: &Config) -> Result<(), String> {
    // The keys are proven against the database before a migration runs.
    let now = crate::clock::Clock::now(&SystemClock).as_micros();
    let (keys, store) = crate::app::open_database(config, crate::app::Opening::ReadOnly, true, now)
        .await
        .map_err(|e| e.to_string())?;
    let applied = store.migrate().await.map_err(|e| e.to_string())?;
    crate::service::key_proof::record(
        store.as_ref(),
        &keys.master,
        &crate::crypto::jwt::key_id(keys.jwt.public_key()),
        now,
    )
    .await
    .map_err(|e| e.to_string())?;
    if applied.is_empty() {
        println!("database is up to date ({})", store.backend());
    }
    for m in applied {
        println!("applied {m}");
    }
    Ok(())
}

async fn create_platform_admin(config: &Config, email: &str) -> Result<(), String> {
    let email = Email::parse(email).map_err(|m| format!("--email {m}"))?;
    let raw = read_password()?;
    let core = crate::app::build_core(config, Arc::new(SystemClock), true)
        .await
        .map_err(|e| e.to_string())?;
    // The platform's policy, like every other place a password is set.
    let subject = crate::service::passwords::Subject {
        tenant: None,
        email: email.as_str(),
        user: None,
    };
    crate::service::passwords::check_new_password(&core, &subject, &raw)
        .await
        .map_err(|e| format!("password refused ({}): it {e}", e.code()))?;
    let now = core.clock.now();
    let id = UserId::generate();
    let user = NewUser {
        id: id.clone(),
        tenant_id: None,
        email_hash: crate::service::users::email_hash(&core, None, email.as_str()),
        email: email.as_str().to_owned(),
        password_hash: core.hasher.hash(&raw).await.map_err(|e| e.to_string())?,
        roles: vec![Role::PlatformAdmin],
        created_at: now,
    };
    let ev = NewAuditEvent {
        tenant_id: None,
        occurred_at: now,
        actor_type: ActorType::System,
        actor_id: None,
        action: "platform_admin.create".into(),
        target_type: Some("user".into()),
        target_id: Some(id.to_string()),
        outcome: Outcome::Success,
        reason: Some("cli".into()),
        ip: None,
        request_id: None,
        security_event: None,
    };
    match core.store.create_user(&user, &[ev]).await {
        Ok(()) => {
            println!("created platform admin {id}");
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => {
            Err("a platform admin with this email already exists".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reads a password from standard input: from a terminal without echo (the terminal's echo
/// is switched off while it is typed), else the first line of what is piped in.
fn read_password() -> Result<SecretString, String> {
    let mut line = if std::io::stdin().is_terminal() {
        let term = [console::Term::stderr(), console::Term::stdout()]
            .into_iter()
            .find(console::Term::is_term)
            .ok_or("standard input is a terminal but there is none to prompt on; pipe the password in instead")?;
        term.write_str("password (not shown as you type): ")
            .map_err(|e| format!("cannot prompt for the password: {e}"))?;
        term.read_secure_line()
            .map_err(|e| format!("cannot read the password from the terminal: {e}"))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        line
    };
    let raw = SecretString::from(line.trim_end_matches(['\n', '\r']).to_owned());
    zeroize::Zeroize::zeroize(&mut line);
    Ok(raw)
}

/// `kasho admin invitation-link --tenant SLUG EMAIL`: prints a fresh link (shown once).
async fn invitation_link(config: &Config, tenant: &str, email: &str) -> Result<(), String> {
    let core = crate::app::build_core(config, Arc::new(SystemClock), true)
        .await
        .map_err(|e| e.to_string())?;
    let issued = crate::service::invitations::console_link(&core, tenant, email)
        .await
        .map_err(|e| match e {
            crate::error::AppError::NotFound(what) => {
                format!(
                    "no {what} `{}` in tenant `{tenant}`",
                    if what == "tenant" { tenant } else { email }
                )
            }
            other => format!("{} ({})", other, other.code()),
        })?;
    println!(
        "# invitation link for user {} (works once, until {}); earlier links no longer work.\n\
         # Hand it to the person only: whoever opens it chooses the account's password.\n{}",
        issued.user_id,
        issued.expires_at.to_rfc3339(),
        secrecy::ExposeSecret::expose_secret(&issued.link)
    );
    Ok(())
}

/// A keyring over the configured database, its keys proven against it first. Never generates
/// keys: a missing master key must not silently become a new one.
async fn open_keyring(
    config: &Config,
    opening: crate::app::Opening,
) -> Result<
    (
        std::sync::Arc<dyn crate::store::Store>,
        crate::service::keys::Keyring,
        crate::crypto::keys::KeyMaterial,
    ),
    String,
> {
    let now = crate::clock::Clock::now(&SystemClock).as_micros();
    let (keys, store) = crate::app::open_database(config, opening, false, now)
        .await
        .map_err(|e| match e {
            crate::app::StartError::Keys(e) => {
                format!("the key commands need the configured master key: {e}")
            }
            other => other.to_string(),
        })?;
    let keyring = crate::service::keys::Keyring::new(
        store.clone(),
        std::sync::Arc::new(crate::clock::SystemClock),
        &keys.master,
        config.key_rotate_after_encryptions,
    );
    Ok((store, keyring, keys))
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} ({{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

async fn keys_command(config: &Config, command: KeysCommand) -> Result<(), String> {
    let opening = match command {
        KeysCommand::Status => crate::app::Opening::ReadOnly,
        KeysCommand::AdoptJwtKey => crate::app::Opening::AdoptJwtKey,
        _ => crate::app::Opening::Record,
    };
    let (store, keyring, keys) = open_keyring(config, opening).await?;
    match command {
        KeysCommand::Status => {
            for k in store.master_keys().await.map_err(|e| e.to_string())? {
                println!(
                    "master key v{}: {} (root {}){}",
                    k.version,
                    k.status,
                    k.root_id,
                    if k.wrapped.is_none() {
                        ", material purged"
                    } else {
                        ""
                    }
                );
            }
            // Every data key version, whatever its state (spent included), then the totals.
            let all = store.all_data_keys().await.map_err(|e| e.to_string())?;
            let mut totals = std::collections::BTreeMap::<&str, usize>::new();
            for k in &all {
                *totals.entry(k.status.as_str()).or_default() += 1;
                let kind = k.owner.split(':').next().unwrap_or(&k.owner);
                println!(
                    "data key {} v{} (tenant {}, {}): {}; wrapped by master key v{}; {} encryptions",
                    k.id,
                    k.version,
                    k.tenant_id,
                    if kind == "customer" { &k.owner } else { kind },
                    k.status,
                    k.kek_version,
                    k.encryptions
                );
            }
            for status in ["active", "spent", "retiring", "retired", "destroyed"] {
                println!(
                    "data keys {status}: {}",
                    totals.get(status).copied().unwrap_or(0)
                );
            }
            Ok(())
        }
        KeysCommand::AdoptJwtKey => {
            let kid = crate::crypto::jwt::key_id(keys.jwt.public_key());
            let ev = NewAuditEvent {
                tenant_id: None,
                occurred_at: crate::clock::Clock::now(&SystemClock),
                actor_type: ActorType::System,
                actor_id: None,
                action: "key.jwt.adopt".into(),
                target_type: Some("key".into()),
                target_id: Some(format!("jwt:{kid}")),
                outcome: Outcome::Success,
                reason: Some("cli".into()),
                ip: None,
                request_id: None,
                security_event: None,
            };
            let changed = store
                .adopt_jwt_kid(&kid, &[ev])
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                if changed {
                    format!(
                        "the database now expects JWT signing key {kid}; tokens signed by the old key no longer verify"
                    )
                } else {
                    format!("the database already expects JWT signing key {kid}")
                }
            );
            Ok(())
        }
        KeysCommand::RotateIndex { tenant } => {
            let record = store
                .get_tenant_by_slug(&tenant)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no tenant with slug `{tenant}`"))?;
            let id = crate::ids::TenantId::from_trusted(record.id);
            let bar = progress_bar("re-indexing customers");
            let r = crate::service::customers::rotate_index(
                store.as_ref(),
                &keyring,
                &id,
                &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            println!(
                "tenant {tenant}: {} index key version {}; {} customers re-indexed; retired versions: {:?}",
                if r.resumed {
                    "resumed rotation to"
                } else {
                    "rotated to"
                },
                r.version,
                r.reindexed,
                r.retired
            );
            Ok(())
        }
        KeysCommand::RotateMaster => {
            let bar = progress_bar("rewrapping data keys");
            let r = keyring
                .rotate_master(&|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            println!(
                "{} master key version {}: {} data keys rewrapped; retired versions: {:?}",
                if r.resumed {
                    "resumed rotation to"
                } else {
                    "rotated to"
                },
                r.version,
                r.rewrapped,
                r.retired
            );
            if !r.still_retiring.is_empty() {
                println!(
                    "not retired yet: {:?} (a data key was created under it meanwhile; run the command again, or let `kasho serve` finish it)",
                    r.still_retiring
                );
            }
            Ok(())
        }
        KeysCommand::RotateTenant { slug } => {
            let tenant = store
                .get_tenant_by_slug(&slug)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no tenant with slug `{slug}`"))?;
            let tenant = crate::ids::TenantId::from_trusted(tenant.id);
            let bar = progress_bar("re-encrypting");
            let r = keyring
                .rotate_tenant(&tenant, &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            println!(
                "tenant {slug}: data key version {}; {} values re-encrypted, {} legacy values sealed; retired versions: {:?}",
                r.version, r.reencrypted, r.legacy_sealed, r.retired
            );
            Ok(())
        }
    }
}

async fn audit_verify(config: &Config) -> Result<(), String> {
    // Never generate keys here: a missing master key must not look like a tampered log. A wrong
    // one is named as such by the proof, before any chain is walked.
    let now = crate::clock::Clock::now(&SystemClock).as_micros();
    let (keys, store) =
        crate::app::open_database(config, crate::app::Opening::ReadOnly, false, now)
            .await
            .map_err(|e| match e {
                crate::app::StartError::Keys(e) => format!(
                    "cannot verify the audit log without the master key that sealed it: {e}"
                ),
                other => other.to_string(),
            })?;
    let sealer = crate::app::audit_sealer(&keys);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying audit chains {bar:40} {pos}/{len} records ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = crate::service::audit::verify_all(
        store.as_ref(),
        &sealer,
        |total| bar.set_length(total),
        |n| bar.inc(n),
    )
    .await;
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            println!(
                "audit log intact: {} records in {} chains",
                r.records, r.chains
            );
            Ok(())
        }
        Err(e) => Err(format!("AUDIT LOG TAMPERED: {e}")),
    }
}

/// `kasho config check`: every value with its source, then every problem found (all of them,
/// not just the first); fails when `serve` would refuse to start.
fn config_check(config: &Config) -> Result<(), String> {
    println!("environment: {}", config.env.as_str());
    for (key, value, source) in &config.report {
        println!("  {key:<28} {value:<44} [{source}]");
    }
    for note in config.retention_notes() {
        println!("note: {note}");
    }
    let mut refusals: Vec<String> = config
        .findings
        .iter()
        .filter(|f| f.refused)
        .map(ToString::to_string)
        .collect();
    for w in config.warnings() {
        eprintln!("WARNING: {w}");
    }
    // A check never writes: report missing keys instead of generating them. (Production's
    // missing keys are already among the refusals.)
    let keys_refused = config
        .findings
        .iter()
        .any(|f| f.refused && matches!(f.key, "jwt_signing_key" | "master_key"));
    if !keys_refused {
        match crate::crypto::keys::KeyMaterial::load(&crate::app::key_sources(config, false)) {
            Ok(_) => println!("keys: JWT signing key and master key present"),
            Err(crate::crypto::keys::KeyError::Missing { what, .. })
                if config.may_generate_keys() =>
            {
                println!(
                    "keys: no {what} yet; `kasho serve` generates missing keys into {} (development only)",
                    config.data_dir.join("keys").display()
                )
            }
            Err(e) => refusals.push(e.to_string()),
        }
    }
    match config.transport_check() {
        Ok(Some(warning)) => println!("note: {warning}"),
        Ok(None) => {}
        Err(msg) => refusals.push(msg),
    }
    if let Some(files) = &config.tls {
        match crate::tls::load(files) {
            Ok(loaded) => println!(
                "tls: certificate and key load (certificate sha256 {}){}",
                loaded.fingerprint,
                if files.client_ca.is_some() {
                    "; client certificates are verified against the client CA"
                } else {
                    ""
                }
            ),
            Err(e) => refusals.push(e.to_string()),
        }
    }
    if refusals.is_empty() {
        println!("configuration OK");
        return Ok(());
    }
    for r in &refusals {
        eprintln!("REFUSED: {r}");
    }
    Err(format!(
        "configuration refused: {} problem{} above must be fixed before `kasho serve` starts",
        refusals.len(),
        if refusals.len() == 1 { "" } else { "s" }
    ))
}

async fn retention_run(config: &Config) -> Result<(), String> {
    // Never generate keys here: pruning seals checkpoints with the audit key that sealed the log.
    crate::crypto::keys::KeyMaterial::load(&crate::app::key_sources(config, false)).map_err(
        |e| format!("cannot run retention without the master key that sealed the audit log: {e}"),
    )?;
    for note in config.retention_notes() {
        println!("note: {note}");
    }
    let core = crate::app::build_core(config, Arc::new(SystemClock), true)
        .await
        .map_err(|e| e.to_string())?;
    let report = crate::service::retention::run_once(&core, core.clock.now())
        .await
        .map_err(|e| format!("retention run failed, nothing was purged: {e}"))?;
    let c = &report.counts;
    println!("retention run at {}", report.ran_at.to_rfc3339());
    println!(
        "  sessions            {:>8}  (ended before {})",
        c.sessions,
        report.sessions_cutoff.to_rfc3339()
    );
    println!(
        "  refresh tokens      {:>8}  (of those sessions)",
        c.refresh_tokens
    );
    println!(
        "  idempotency keys    {:>8}  (expired by {})",
        c.idempotency_keys,
        report.idempotency_cutoff.to_rfc3339()
    );
    println!(
        "  audit records       {:>8}  (before {}, {} days; {} chains checkpointed)",
        c.audit_events,
        report.audit_cutoff.to_rfc3339(),
        report.audit_days,
        c.audit_chains
    );
    match report.reset_tokens {
        Some(n) => println!(
            "  reset tokens        {n:>8}  (expired before {})",
            report.reset_tokens_cutoff.to_rfc3339()
        ),
        None => println!("  reset tokens        not held"),
    }
    println!(
        "  outbox messages     {:>8}  (sent or failed before {})",
        c.mail_messages,
        report.mail_cutoff.to_rfc3339()
    );
    println!(
        "  security alerts     {:>8}  (delivered or failed before {})",
        c.security_alerts,
        report.alerts_cutoff.to_rfc3339()
    );
    if report.refused_chains.is_empty() {
        return Ok(());
    }
    let chains: Vec<String> = report
        .refused_chains
        .iter()
        .map(|(chain, e)| format!("audit chain `{chain}`: {e}"))
        .collect();
    Err(format!(
        "AUDIT LOG TAMPERED: kept the old records of chains that do not verify: {}",
        chains.join("; ")
    ))
}
