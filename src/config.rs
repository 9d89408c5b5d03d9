//! Configuration: one typed struct, read in layers — built-in defaults, then an optional
//! `kasho.toml`, then `KASHO_*` environment variables, then command-line flags. A secret may
//! instead be read from a file named by `<KEY>_FILE` (`KASHO_MASTER_KEY_FILE=/run/secrets/mk`).
//! Every value is validated at start-up; a bad one stops it with an error that names the key and
//! where the value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::crypto::password::HashParams;

pub mod alerts;
pub mod mail;
pub mod ratelimit;

/// Where a configuration value came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Source {
    #[default]
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
    /// A secret read from the file named by this origin.
    SecretFile {
        path: PathBuf,
        named_by: Box<Source>,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag --{n}"),
            Source::SecretFile { path, named_by } => {
                write!(f, "file {} (named by {named_by})", path.display())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{key}` (from {origin}): {reason}")]
    Invalid {
        key: String,
        origin: Source,
        reason: String,
    },
    #[error("unknown configuration key `{key}` in {origin}; known keys: {known}")]
    UnknownKey {
        key: String,
        origin: Source,
        known: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// Production refuses insecure settings: every one found, not just the first.
    #[error("{}", refused_list(.0))]
    Refused(Vec<Finding>),
}

fn refused_list(findings: &[Finding]) -> String {
    let mut s = format!(
        "production refuses {} insecure setting{}:",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    );
    for f in findings {
        s.push_str("\n  - ");
        s.push_str(&f.to_string());
    }
    s
}

/// An insecure setting found by validation: production refuses to start with it (`refused`), or
/// starts and warns. `config check` lists every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The configuration key at fault.
    pub key: &'static str,
    /// Where its value came from.
    pub origin: String,
    /// Whether production refuses to start (otherwise a warning).
    pub refused: bool,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.key)?;
        if !self.origin.is_empty() {
            write!(f, " (from {})", self.origin)?;
        }
        write!(f, ": {}; fix: {}", self.problem, self.fix)
    }
}

/// Deployment environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Embedded single-machine mode: missing keys are generated, weaker settings warn.
    Development,
    /// Missing keys and sub-minimum password hashing stop start-up.
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Production => "production",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// One configuration key.
struct KeyDef {
    name: &'static str,
    secret: bool,
    help: &'static str,
}

const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "env",
        secret: false,
        help: "development (default) or production",
    },
    KeyDef {
        name: "listen",
        secret: false,
        help: "host:port to serve on (127.0.0.1:8080)",
    },
    KeyDef {
        name: "data_dir",
        secret: false,
        help: "directory for the embedded database and generated keys (./kasho-data)",
    },
    KeyDef {
        name: "database_url",
        secret: true,
        help: "sqlite://… or postgres://… (default: SQLite in data_dir); sslmode is honoured",
    },
    KeyDef {
        name: "database_max_connections",
        secret: false,
        help: "connection pool size (10)",
    },
    KeyDef {
        name: "jwt_signing_key",
        secret: true,
        help: "Ed25519 PKCS#8 PEM that signs access tokens (production: required, from a file of mode 0600)",
    },
    KeyDef {
        name: "master_key",
        secret: true,
        help: "base64 of 32 random bytes; root of every derived key (production: required, from a file of mode 0600)",
    },
    KeyDef {
        name: "jwt_issuer",
        secret: false,
        help: "`iss` of access tokens (kasho)",
    },
    KeyDef {
        name: "jwt_audience",
        secret: false,
        help: "`aud` of access tokens (kasho-api)",
    },
    KeyDef {
        name: "access_token_ttl_seconds",
        secret: false,
        help: "default access-token lifetime, 300..=86400 (3600)",
    },
    KeyDef {
        name: "refresh_token_ttl_seconds",
        secret: false,
        help: "absolute session lifetime, 3600..=7776000 (2592000 = 30 days)",
    },
    KeyDef {
        name: "idempotency_ttl_seconds",
        secret: false,
        help: "how long idempotency keys and their responses are kept, at least 86400 (86400)",
    },
    KeyDef {
        name: "key_rotate_after_encryptions",
        secret: false,
        help: "encryptions under one data key version before it is rotated, at most 2^31 (1073741824)",
    },
    KeyDef {
        name: "mfa_required_roles",
        secret: false,
        help: "comma-separated roles that must use MFA in tenants that did not choose (MANAGER,COMPLIANCE_OFFICER,PLATFORM_ADMIN); production refuses a list without PLATFORM_ADMIN",
    },
    KeyDef {
        name: "trusted_proxies",
        secret: false,
        help: "comma-separated CIDRs whose X-Forwarded-For is believed (none); production refuses one wider than /8 (IPv4) or /16 (IPv6)",
    },
    KeyDef {
        name: "login_ip_max_failures",
        secret: false,
        help: "failed sign-ins from one address, across accounts, before it is refused for the window, 5..=100000 (50)",
    },
    KeyDef {
        name: "login_ip_window_seconds",
        secret: false,
        help: "window (and refusal period) of login_ip_max_failures, 60..=86400 (900)",
    },
    KeyDef {
        name: "smtp_url",
        secret: false,
        help: "SMTP relay for outgoing mail, smtp://host[:port]; unset: mail is written to data_dir/mailbox/",
    },
    KeyDef {
        name: "smtp_starttls",
        secret: false,
        help: "upgrade SMTP with STARTTLS before sending anything, never falling back to plain text (true in production, where false is refused; false in development)",
    },
    KeyDef {
        name: "smtp_username",
        secret: false,
        help: "SMTP AUTH user name (PLAIN or LOGIN, only inside STARTTLS); needs smtp_password (none)",
    },
    KeyDef {
        name: "smtp_password",
        secret: true,
        help: "SMTP AUTH password; needs smtp_username (none)",
    },
    KeyDef {
        name: "smtp_ca_file",
        secret: false,
        help: "PEM bundle trusted for the SMTP relay's certificate instead of the Mozilla roots (none)",
    },
    KeyDef {
        name: "mail_from",
        secret: false,
        help: "From address of outgoing mail (kasho@localhost)",
    },
    KeyDef {
        name: "public_url",
        secret: false,
        help: "public base URL of the service, used in emailed links (http://<listen>; production requires https://)",
    },
    KeyDef {
        name: "mail_max_attempts",
        secret: false,
        help: "delivery attempts of an email before it is marked failed, 1..=50 (8)",
    },
    KeyDef {
        name: "api_token_rotation_overlap_seconds",
        secret: false,
        help: "how long an API token's previous secret keeps working after a rotation that names no overlap, 0..=86400 (3600)",
    },
    KeyDef {
        name: "tls_cert_file",
        secret: false,
        help: "PEM certificate chain to serve HTTPS with (with tls_key_file); unset: plain HTTP",
    },
    KeyDef {
        name: "tls_key_file",
        secret: false,
        help: "PEM private key of tls_cert_file (PKCS#8, PKCS#1 or SEC1)",
    },
    KeyDef {
        name: "tls_client_ca_file",
        secret: false,
        help: "PEM bundle of CAs whose client certificates are accepted (mTLS for platform admins); needs TLS",
    },
    KeyDef {
        name: "platform_admin_client_cert",
        secret: false,
        help: "platform admins must present a client certificate from tls_client_ca_file (true when a client CA is set)",
    },
    KeyDef {
        name: "tls_reload_interval_seconds",
        secret: false,
        help: "how often the TLS files are checked for a renewed certificate (also on SIGHUP), 1..=86400 (30)",
    },
    KeyDef {
        name: "tls_handshake_timeout_seconds",
        secret: false,
        help: "time a client has to complete the TLS handshake, 1..=120 (10)",
    },
    KeyDef {
        name: "allow_plain_http",
        secret: false,
        help: "production only: serve plain HTTP because a proxy in front terminates TLS (false)",
    },
    KeyDef {
        name: "max_header_bytes",
        secret: false,
        help: "largest accepted request header block in bytes, 8192..=1048576 (16384)",
    },
    KeyDef {
        name: "header_read_timeout_seconds",
        secret: false,
        help: "time a client has to send a complete request header block (slow clients are disconnected), 1..=300 (10)",
    },
    KeyDef {
        name: "redis_url",
        secret: true,
        help: "redis://[:password@]host[:port][/db]: share rate-limit buckets and bans between instances (unset: in process)",
    },
    KeyDef {
        name: "redis_key_prefix",
        secret: false,
        help: "prefix of every Redis key Kasho writes (kasho:)",
    },
    KeyDef {
        name: "rate_limit_ip",
        secret: false,
        help: "requests per client address, N/S = N per S seconds, before authentication (3000/60: 50 a second sustained, bursts of 3000)",
    },
    KeyDef {
        name: "rate_limit_credential",
        secret: false,
        help: "requests per signed-in session or API token, N/S (3000/60)",
    },
    KeyDef {
        name: "rate_limit_tenant",
        secret: false,
        help: "requests per tenant, N/S (12000/60)",
    },
    KeyDef {
        name: "rate_limit_login",
        secret: false,
        help: "POST /v1/auth/login per client address, N/S (10/60)",
    },
    KeyDef {
        name: "rate_limit_refresh",
        secret: false,
        help: "POST /v1/auth/refresh per client address, N/S (30/60)",
    },
    KeyDef {
        name: "rate_limit_mfa",
        secret: false,
        help: "POST /v1/auth/mfa and /v1/auth/step-up per client address, N/S (10/60)",
    },
    KeyDef {
        name: "rate_limit_password_reset",
        secret: false,
        help: "POST /v1/auth/password-reset and .../confirm per client address, N/S (5/300)",
    },
    KeyDef {
        name: "intrusion_error_burst",
        secret: false,
        help: "401/403/404 answers to one client address within S seconds that ban it, N/S (50/60)",
    },
    KeyDef {
        name: "refusal_budget",
        secret: false,
        help: "refused money movements one credential may cause within S seconds before its movements answer 429 for the rest of the window, N/S (1000/600)",
    },
    KeyDef {
        name: "search_budget",
        secret: false,
        help: "exact-match searches of customers by personal data (email, phone, national id) one credential without customers:read_pii may make within S seconds before its searches answer 429 for the rest of the window, N/S (100/3600)",
    },
    KeyDef {
        name: "intrusion_ban_seconds",
        secret: false,
        help: "how long a banned client address is refused, 60..=604800 (900)",
    },
    KeyDef {
        name: "intrusion_exempt",
        secret: false,
        help: "comma-separated CIDRs never banned (none); production refuses one wider than /8 (IPv4) or /16 (IPv6)",
    },
    KeyDef {
        name: "argon2_memory_kib",
        secret: false,
        help: "Argon2id memory in KiB (19456)",
    },
    KeyDef {
        name: "argon2_iterations",
        secret: false,
        help: "Argon2id passes (2)",
    },
    KeyDef {
        name: "argon2_parallelism",
        secret: false,
        help: "Argon2id lanes (1)",
    },
    KeyDef {
        name: "max_concurrent_hashes",
        secret: false,
        help: "password hashes computed at once (number of CPUs)",
    },
    KeyDef {
        name: "max_body_bytes",
        secret: false,
        help: "largest accepted request body (1048576)",
    },
    KeyDef {
        name: "request_timeout_seconds",
        secret: false,
        help: "a request still unanswered after this long gets 408 (body still arriving) or 503 (30)",
    },
    KeyDef {
        name: "log_format",
        secret: false,
        help: "json (default) or text",
    },
    KeyDef {
        name: "log_level",
        secret: false,
        help: "tracing filter, e.g. info or kasho=debug (info)",
    },
    KeyDef {
        name: "session_retention_days",
        secret: false,
        help: "days an ended (expired or revoked) session and its refresh tokens are kept, 1..=3650 (30)",
    },
    KeyDef {
        name: "idempotency_retention_hours",
        secret: false,
        help: "hours an idempotency record is kept after it expires, 0..=8760 (0)",
    },
    KeyDef {
        name: "audit_retention_days",
        secret: false,
        help: "days audit and security records are kept, 1..=36500 (396); never less than 366 applies",
    },
    KeyDef {
        name: "retention_interval_seconds",
        secret: false,
        help: "how often `kasho serve` runs the retention job, 60..=86400 (3600)",
    },
    KeyDef {
        name: "alert_webhook_url",
        secret: true,
        help: "http(s):// URL security alerts are POSTed to, signed with alert_webhook_secret (unset: alerts are only logged)",
    },
    KeyDef {
        name: "alert_webhook_secret",
        secret: true,
        help: "HMAC-SHA256 key of the Kasho-Signature header, at least 32 bytes (required with alert_webhook_url)",
    },
    KeyDef {
        name: "alert_webhook_secret_previous",
        secret: true,
        help: "the previous signing secret during a roll: each alert then carries two v1 signatures (none)",
    },
    KeyDef {
        name: "alert_min_severity",
        secret: false,
        help: "security events at or above this severity are alerts: low, medium or high (high)",
    },
    KeyDef {
        name: "alert_webhook_ca_file",
        secret: false,
        help: "PEM bundle trusted for an https alert webhook instead of the Mozilla roots (none)",
    },
    KeyDef {
        name: "metrics_listen",
        secret: false,
        help: "host:port of a separate listener serving only GET /metrics, without a token, e.g. 127.0.0.1:9464 (none); production warns when it is not loopback",
    },
    KeyDef {
        name: "metrics_token",
        secret: true,
        help: "bearer token, at least 32 bytes, that GET /metrics on the main listener requires (unset: /metrics is 404 there)",
    },
];

fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// Raw layered values before parsing.
#[derive(Default)]
pub struct Layers {
    values: BTreeMap<&'static str, (Zeroizing<String>, Source)>,
}

impl Layers {
    /// Sets `key` from `source`, resolving `<key>_file` to the file's contents.
    pub fn set(&mut self, key: &str, value: String, source: Source) -> Result<(), ConfigError> {
        // `<key>_file` names a secret's file, unless it is a key of its own (`tls_cert_file`).
        let indirect = key_def(key).is_none().then(|| key.strip_suffix("_file"));
        let (def, value, source) = if let Some(Some(base)) = indirect {
            let def = key_def(base)
                .filter(|d| d.secret)
                .ok_or_else(|| unknown(key, &source))?;
            let path = PathBuf::from(value.trim());
            let contents = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::Invalid {
                    key: base.to_owned(),
                    origin: source.clone(),
                    reason: format!("cannot read {}: {e}", path.display()),
                }
            })?);
            let trimmed = contents.trim_end_matches(['\n', '\r']).to_owned();
            (
                def,
                trimmed,
                Source::SecretFile {
                    path,
                    named_by: Box::new(source),
                },
            )
        } else {
            (
                key_def(key).ok_or_else(|| unknown(key, &source))?,
                value,
                source,
            )
        };
        self.values
            .insert(def.name, (Zeroizing::new(value), source));
        Ok(())
    }

    /// Reads a TOML file of `key = value` pairs (scalars only).
    pub fn load_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        for (k, v) in table {
            let source = Source::File(path.to_owned());
            let value = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::Invalid {
                        key: k,
                        origin: source,
                        reason: format!(
                            "expected a string, integer or boolean, got {}",
                            other.type_str()
                        ),
                    });
                }
            };
            self.set(&k, value, source)?;
        }
        Ok(())
    }

    /// Reads `KASHO_<KEY>` and `KASHO_<KEY>_FILE` from an environment.
    pub fn load_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        for def in KEYS {
            let name = format!("KASHO_{}", def.name.to_ascii_uppercase());
            let file_name = format!("{name}_FILE");
            match (vars.get(&name), vars.get(&file_name)) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Invalid {
                        key: def.name.to_owned(),
                        origin: Source::Env(name.clone()),
                        reason: format!("both {name} and {file_name} are set; set only one"),
                    });
                }
                (Some(v), None) => self.set(def.name, v.clone(), Source::Env(name))?,
                (None, Some(p)) if def.secret => self.set(
                    &format!("{}_file", def.name),
                    p.clone(),
                    Source::Env(file_name),
                )?,
                _ => {}
            }
        }
        Ok(())
    }

    fn get(&self, key: &'static str) -> Option<(&str, &Source)> {
        self.values.get(key).map(|(v, s)| (v.as_str(), s))
    }

    fn get_any(&self, key: &str) -> Option<(&str, &Source)> {
        self.values.get(key).map(|(v, s)| (v.as_str(), s))
    }
}

fn unknown(key: &str, source: &Source) -> ConfigError {
    ConfigError::UnknownKey {
        key: key.to_owned(),
        origin: source.clone(),
        known: KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
    }
}

/// The validated configuration.
pub struct Config {
    pub env: Environment,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub jwt_signing_key: Option<(SecretString, String)>,
    pub master_key: Option<(SecretString, String)>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl_seconds: i64,
    pub refresh_token_ttl_seconds: i64,
    pub idempotency_ttl_seconds: i64,
    /// Encryptions under one data key version before it is rotated (well below 2^32).
    pub key_rotate_after_encryptions: i64,
    /// Roles that must use MFA where a tenant's policy does not say (and for platform admins).
    pub mfa_required_roles: Vec<crate::domain::authz::Role>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<crate::domain::security::Cidr>,
    pub login_ip_max_failures: i64,
    pub login_ip_window_seconds: i64,
    /// The SMTP relay; `None`: mail goes to `<data_dir>/mailbox/`.
    pub smtp: Option<mail::SmtpTarget>,
    pub mail_from: String,
    /// Base URL of emailed links, without a trailing slash.
    pub public_url: String,
    pub mail_max_attempts: u32,
    /// Default overlap of an API-token rotation (at most 24 h).
    pub api_token_rotation_overlap_seconds: i64,
    /// HTTPS: certificate, key and optional client CA files; `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Platform admins must present a verified client certificate (needs a client CA).
    pub platform_admin_client_cert: bool,
    pub tls_reload_interval_seconds: u32,
    pub tls_handshake_timeout_seconds: u32,
    /// Production may serve plain HTTP behind a TLS-terminating proxy.
    pub allow_plain_http: bool,
    /// Connection limits of the listener.
    pub max_header_bytes: usize,
    pub header_read_timeout_seconds: u32,
    /// Where rate-limit buckets and bans are shared (`None`: in process).
    pub redis: Option<ratelimit::RedisSettings>,
    /// Rate limits and intrusion-ban settings.
    pub limits: ratelimit::LimitSettings,
    pub argon2: HashParams,
    pub max_concurrent_hashes: usize,
    pub max_body_bytes: usize,
    /// A request unanswered after this long is cut off (408 while its body is still arriving,
    /// 503 otherwise).
    pub request_timeout_seconds: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Retention periods of the classes the retention job purges.
    pub retention: crate::domain::processing::RetentionPolicy,
    /// Security alerts: threshold, webhook, signing secrets.
    pub alerts: alerts::AlertSettings,
    /// A separate listener serving only `GET /metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// The bearer token of `GET /metrics` on the main listener.
    pub metrics_token: Option<SecretString>,
    /// (key, shown value, source) of every key, for `kasho config check`.
    pub report: Vec<(&'static str, String, String)>,
    /// Insecure settings: refusals (only in a configuration built unchecked, for
    /// `config check`) and warnings.
    pub findings: Vec<Finding>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("env", &self.env)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// A data key version is rotated once this many encryptions have been reserved under it: far
/// below the 2^32 random-nonce bound of AES-GCM (NIST SP 800-38D).
pub const DEFAULT_ROTATE_AFTER: i64 = 1 << 30;

/// Access-token lifetime bounds (seconds), also used for per-tenant overrides.
pub const ACCESS_TTL_BOUNDS: (i64, i64) = (300, 86_400);
const REFRESH_TTL_BOUNDS: (i64, i64) = (3_600, 7_776_000);

impl Config {
    /// Layers defaults, the config file (`--config`, else `KASHO_CONFIG`, else `./kasho.toml`
    /// if present), the process environment and `flags`.
    pub fn load(config_path: Option<&Path>, flags: &[(&str, String)]) -> Result<Self, ConfigError> {
        Self::load_unchecked(config_path, flags)?.refuse_insecure()
    }

    /// [`Config::load`] without refusing insecure production settings: they are in
    /// [`Config::findings`], for `config check` to list them all.
    pub fn load_unchecked(
        config_path: Option<&Path>,
        flags: &[(&str, String)],
    ) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        let env_path = std::env::var_os("KASHO_CONFIG").map(PathBuf::from);
        match config_path.map(Path::to_path_buf).or(env_path) {
            Some(p) => layers.load_file(&p)?,
            None => {
                let p = Path::new("kasho.toml");
                if p.exists() {
                    layers.load_file(p)?;
                }
            }
        }
        layers.load_env(std::env::vars())?;
        for (k, v) in flags {
            layers.set(k, v.clone(), Source::Flag(k.replace('_', "-")))?;
        }
        Self::from_layers_unchecked(&layers)
    }

    /// Stops at insecure production settings, naming every one (see [`Finding`]).
    pub fn refuse_insecure(self) -> Result<Self, ConfigError> {
        let refused: Vec<Finding> = self
            .findings
            .iter()
            .filter(|f| f.refused)
            .cloned()
            .collect();
        if refused.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::Refused(refused))
        }
    }

    /// The insecure settings production starts with anyway, to be logged loudly.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.refused)
    }

    /// Builds a configuration from explicit pairs only (tests, embedding).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        for (k, v) in pairs {
            layers.set(k, (*v).to_owned(), Source::Flag((*k).to_owned()))?;
        }
        Self::from_layers(&layers)
    }

    /// Parses and validates `l`, refusing insecure production settings.
    pub fn from_layers(l: &Layers) -> Result<Self, ConfigError> {
        Self::from_layers_unchecked(l)?.refuse_insecure()
    }

    /// Parses and validates `l`; insecure production settings are collected in `findings`.
    pub fn from_layers_unchecked(l: &Layers) -> Result<Self, ConfigError> {
        let mut report = Vec::new();
        let mut findings: Vec<Finding> = Vec::new();
        let refuse = |key: &'static str, src: &Source, problem: String, fix: String| Finding {
            key,
            origin: src.to_string(),
            refused: true,
            problem,
            fix,
        };
        let mut take = |key: &'static str, default: Option<String>| -> Option<(String, Source)> {
            let secret = key_def(key).is_some_and(|d| d.secret);
            let found = l
                .get(key)
                .map(|(v, s)| (v.to_owned(), s.clone()))
                .or_else(|| default.map(|d| (d, Source::Default)));
            let shown = match &found {
                None => "(not set)".to_owned(),
                Some((v, _)) if secret => redact(key, v),
                Some((v, _)) => v.clone(),
            };
            let src = found
                .as_ref()
                .map_or("-".to_owned(), |(_, s)| s.to_string());
            report.push((key, shown, src));
            found
        };
        fn invalid(key: &str, src: &Source, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key: key.to_owned(),
                origin: src.clone(),
                reason: reason.into(),
            }
        }
        fn int<T>(key: &str, (v, s): &(String, Source), lo: T, hi: T) -> Result<T, ConfigError>
        where
            T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
        {
            let n: T = v
                .trim()
                .parse()
                .map_err(|_| invalid(key, s, format!("`{v}` is not a whole number")))?;
            if n < lo || n > hi {
                return Err(invalid(key, s, format!("{n} is outside {lo}..={hi}")));
            }
            Ok(n)
        }
        fn boolean(key: &str, (v, s): &(String, Source)) -> Result<bool, ConfigError> {
            match v.trim() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                other => Err(invalid(
                    key,
                    s,
                    format!("`{other}`: expected true or false"),
                )),
            }
        }

        let env_v = take("env", Some("development".into())).unwrap_or_default();
        let env = match env_v.0.as_str() {
            "development" | "dev" => Environment::Development,
            "production" | "prod" => Environment::Production,
            other => {
                return Err(invalid(
                    "env",
                    &env_v.1,
                    format!("`{other}`: expected development or production"),
                ));
            }
        };
        let listen_v = take("listen", Some("127.0.0.1:8080".into())).unwrap_or_default();
        let listen: SocketAddr = listen_v.0.parse().map_err(|_| {
            invalid(
                "listen",
                &listen_v.1,
                format!("`{}` is not a host:port address", listen_v.0),
            )
        })?;
        let data_v = take("data_dir", Some("./kasho-data".into())).unwrap_or_default();
        if data_v.0.trim().is_empty() {
            return Err(invalid("data_dir", &data_v.1, "must not be empty"));
        }
        let data_dir = PathBuf::from(&data_v.0);
        let default_db = format!("sqlite://{}/kasho.db", data_dir.display());
        let db_v = take("database_url", Some(default_db)).unwrap_or_default();
        if !(db_v.0.starts_with("sqlite:")
            || db_v.0.starts_with("postgres://")
            || db_v.0.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                &db_v.1,
                "expected a sqlite://… or postgres://… URL",
            ));
        }
        let pool_v = take("database_max_connections", Some("10".into())).unwrap_or_default();
        let database_max_connections = int("database_max_connections", &pool_v, 1u32, 1000)?;
        let describe = |(v, s): (String, Source)| (SecretString::from(v), s.to_string());
        let jwt_signing_key = take("jwt_signing_key", None).map(describe);
        let master_key = take("master_key", None).map(describe);
        let jwt_issuer = take("jwt_issuer", Some("kasho".into())).unwrap_or_default();
        if jwt_issuer.0.trim().is_empty() {
            return Err(invalid("jwt_issuer", &jwt_issuer.1, "must not be empty"));
        }
        let jwt_audience = take("jwt_audience", Some("kasho-api".into())).unwrap_or_default();
        if jwt_audience.0.trim().is_empty() {
            return Err(invalid(
                "jwt_audience",
                &jwt_audience.1,
                "must not be empty",
            ));
        }
        let at = take("access_token_ttl_seconds", Some("3600".into())).unwrap_or_default();
        let access_token_ttl_seconds = int(
            "access_token_ttl_seconds",
            &at,
            ACCESS_TTL_BOUNDS.0,
            ACCESS_TTL_BOUNDS.1,
        )?;
        let rt = take("refresh_token_ttl_seconds", Some("2592000".into())).unwrap_or_default();
        let refresh_token_ttl_seconds = int(
            "refresh_token_ttl_seconds",
            &rt,
            REFRESH_TTL_BOUNDS.0,
            REFRESH_TTL_BOUNDS.1,
        )?;
        let it = take("idempotency_ttl_seconds", Some("86400".into())).unwrap_or_default();
        let idempotency_ttl_seconds = int("idempotency_ttl_seconds", &it, 86_400, 30 * 86_400)?;
        let kr = take(
            "key_rotate_after_encryptions",
            Some(DEFAULT_ROTATE_AFTER.to_string()),
        )
        .unwrap_or_default();
        let key_rotate_after_encryptions =
            int("key_rotate_after_encryptions", &kr, 2i64, 1i64 << 31)?;
        let mr = take(
            "mfa_required_roles",
            Some("MANAGER,COMPLIANCE_OFFICER,PLATFORM_ADMIN".into()),
        )
        .unwrap_or_default();
        let mut mfa_required_roles = Vec::new();
        for r in mr.0.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let role = crate::domain::authz::Role::parse(r).ok_or_else(|| {
                invalid("mfa_required_roles", &mr.1, format!("unknown role `{r}`"))
            })?;
            mfa_required_roles.push(role);
        }
        let tp = take("trusted_proxies", Some(String::new())).unwrap_or_default();
        let mut trusted_proxies = Vec::new();
        for c in tp.0.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            trusted_proxies.push(
                c.parse::<crate::domain::security::Cidr>()
                    .map_err(|e| invalid("trusted_proxies", &tp.1, e))?,
            );
        }
        let lf_v = take("login_ip_max_failures", Some("50".into())).unwrap_or_default();
        let login_ip_max_failures = int("login_ip_max_failures", &lf_v, 5i64, 100_000)?;
        let lw_v = take("login_ip_window_seconds", Some("900".into())).unwrap_or_default();
        let login_ip_window_seconds = int("login_ip_window_seconds", &lw_v, 60i64, 86_400)?;
        let ov_v =
            take("api_token_rotation_overlap_seconds", Some("3600".into())).unwrap_or_default();
        let api_token_rotation_overlap_seconds =
            int("api_token_rotation_overlap_seconds", &ov_v, 0i64, 86_400)?;
        let tls = {
            let cert = take("tls_cert_file", None).filter(|(v, _)| !v.trim().is_empty());
            let key = take("tls_key_file", None).filter(|(v, _)| !v.trim().is_empty());
            let ca = take("tls_client_ca_file", None).filter(|(v, _)| !v.trim().is_empty());
            match (cert, key) {
                (Some((c, _)), Some((k, _))) => Some(crate::tls::TlsFiles {
                    cert: PathBuf::from(c.trim()),
                    key: PathBuf::from(k.trim()),
                    client_ca: ca.map(|(v, _)| PathBuf::from(v.trim())),
                }),
                (Some((_, src)), None) => {
                    return Err(invalid(
                        "tls_cert_file",
                        &src,
                        "tls_key_file must be set as well (HTTPS needs both the certificate and its key)",
                    ));
                }
                (None, Some((_, src))) => {
                    return Err(invalid(
                        "tls_key_file",
                        &src,
                        "tls_cert_file must be set as well (HTTPS needs both the certificate and its key)",
                    ));
                }
                (None, None) => {
                    if let Some((_, src)) = ca {
                        return Err(invalid(
                            "tls_client_ca_file",
                            &src,
                            "client certificates need HTTPS: set tls_cert_file and tls_key_file",
                        ));
                    }
                    None
                }
            }
        };
        let has_client_ca = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let pac = take(
            "platform_admin_client_cert",
            Some(has_client_ca.to_string()),
        )
        .unwrap_or_default();
        let platform_admin_client_cert = boolean("platform_admin_client_cert", &pac)?;
        if platform_admin_client_cert && !has_client_ca {
            return Err(invalid(
                "platform_admin_client_cert",
                &pac.1,
                "requires tls_client_ca_file (the CA that issues the admins' client certificates)",
            ));
        }
        let tr = take("tls_reload_interval_seconds", Some("30".into())).unwrap_or_default();
        let tls_reload_interval_seconds = int("tls_reload_interval_seconds", &tr, 1u32, 86_400)?;
        let th = take("tls_handshake_timeout_seconds", Some("10".into())).unwrap_or_default();
        let tls_handshake_timeout_seconds = int("tls_handshake_timeout_seconds", &th, 1u32, 120)?;
        let ap = take("allow_plain_http", Some("false".into())).unwrap_or_default();
        let allow_plain_http = boolean("allow_plain_http", &ap)?;
        let mh = take("max_header_bytes", Some("16384".into())).unwrap_or_default();
        // hyper refuses a read buffer below 8 KiB.
        let max_header_bytes = int("max_header_bytes", &mh, 8192usize, 1024 * 1024)?;
        let hr = take("header_read_timeout_seconds", Some("10".into())).unwrap_or_default();
        let header_read_timeout_seconds = int("header_read_timeout_seconds", &hr, 1u32, 300)?;
        let redis_prefix = take("redis_key_prefix", Some("kasho:".into())).unwrap_or_default();
        if redis_prefix.0.is_empty()
            || redis_prefix.0.len() > 64
            || redis_prefix.0.chars().any(|c| !c.is_ascii_graphic())
        {
            return Err(invalid(
                "redis_key_prefix",
                &redis_prefix.1,
                "expected 1 to 64 printable ASCII characters without spaces",
            ));
        }
        let redis = match take("redis_url", None) {
            Some((v, src)) if !v.trim().is_empty() => {
                let url = v.trim();
                if !url.starts_with("redis://") {
                    return Err(invalid(
                        "redis_url",
                        &src,
                        "expected a redis://[:password@]host[:port][/db] URL (rediss:// is not \
                         supported: reach a TLS Redis through a local tunnel)",
                    ));
                }
                if redis::Client::open(url).is_err() {
                    return Err(invalid("redis_url", &src, "not a valid redis:// URL"));
                }
                Some(ratelimit::RedisSettings {
                    url: SecretString::from(url.to_owned()),
                    key_prefix: redis_prefix.0.clone(),
                })
            }
            _ => None,
        };
        let limits = {
            use ratelimit::{LimitSettings, Rate};
            let d = LimitSettings::default();
            let mut rate = |key: &'static str, default: Rate| -> Result<Rate, ConfigError> {
                let v = take(key, Some(default.to_string())).unwrap_or_default();
                v.0.parse::<Rate>().map_err(|e| invalid(key, &v.1, e))
            };
            let ip = rate("rate_limit_ip", d.ip)?;
            let credential = rate("rate_limit_credential", d.credential)?;
            let tenant = rate("rate_limit_tenant", d.tenant)?;
            let login = rate("rate_limit_login", d.login)?;
            let refresh = rate("rate_limit_refresh", d.refresh)?;
            let mfa = rate("rate_limit_mfa", d.mfa)?;
            let password_reset = rate("rate_limit_password_reset", d.password_reset)?;
            let intrusion_error_burst = rate("intrusion_error_burst", d.intrusion_error_burst)?;
            let refusal_budget = rate("refusal_budget", d.refusal_budget)?;
            let search_budget = rate("search_budget", d.search_budget)?;
            let bs = take(
                "intrusion_ban_seconds",
                Some(d.intrusion_ban_seconds.to_string()),
            )
            .unwrap_or_default();
            let intrusion_ban_seconds = int("intrusion_ban_seconds", &bs, 60u32, 604_800)?;
            let ex = take("intrusion_exempt", Some(String::new())).unwrap_or_default();
            let mut intrusion_exempt = Vec::new();
            for c in ex.0.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                intrusion_exempt.push(
                    c.parse::<crate::domain::security::Cidr>()
                        .map_err(|e| invalid("intrusion_exempt", &ex.1, e))?,
                );
            }
            LimitSettings {
                ip,
                credential,
                tenant,
                login,
                refresh,
                mfa,
                password_reset,
                intrusion_error_burst,
                intrusion_ban_seconds,
                intrusion_exempt,
                refusal_budget,
                search_budget,
            }
        };
        let m = take(
            "argon2_memory_kib",
            Some(HashParams::OWASP_MINIMUM.memory_kib.to_string()),
        )
        .unwrap_or_default();
        let t = take("argon2_iterations", Some("2".into())).unwrap_or_default();
        let p = take("argon2_parallelism", Some("1".into())).unwrap_or_default();
        let argon2 = HashParams {
            memory_kib: int("argon2_memory_kib", &m, 8u32, 4 * 1024 * 1024)?,
            iterations: int("argon2_iterations", &t, 1u32, 100)?,
            parallelism: int("argon2_parallelism", &p, 1u32, 64)?,
        };
        if argon2.memory_kib < 8 * argon2.parallelism {
            return Err(invalid(
                "argon2_memory_kib",
                &m.1,
                "must be at least 8 KiB per lane",
            ));
        }
        if env == Environment::Production && !argon2.meets_minimum() {
            findings.push(refuse(
                "argon2_memory_kib",
                &m.1,
                "production requires at least Argon2id m=19456 KiB, t=2, p=1 (OWASP)".into(),
                "raise argon2_memory_kib, argon2_iterations and argon2_parallelism to at least \
                 19456, 2 and 1 (or unset them)"
                    .into(),
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let h = take("max_concurrent_hashes", Some(cpus.to_string())).unwrap_or_default();
        let max_concurrent_hashes = int("max_concurrent_hashes", &h, 1usize, 1024)?;
        let b = take("max_body_bytes", Some("1048576".into())).unwrap_or_default();
        let max_body_bytes = int("max_body_bytes", &b, 1024usize, 64 * 1024 * 1024)?;
        let rt = take("request_timeout_seconds", Some("30".into())).unwrap_or_default();
        let request_timeout_seconds = int("request_timeout_seconds", &rt, 1u64, 3_600)?;
        let lf = take("log_format", Some("json".into())).unwrap_or_default();
        let log_format = match lf.0.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(invalid(
                    "log_format",
                    &lf.1,
                    format!("`{other}`: expected json or text"),
                ));
            }
        };
        let ll = take("log_level", Some("info".into())).unwrap_or_default();
        if tracing_subscriber::EnvFilter::try_new(&ll.0).is_err() {
            return Err(invalid(
                "log_level",
                &ll.1,
                format!("`{}` is not a tracing filter", ll.0),
            ));
        }
        let smtp = match take("smtp_url", None) {
            Some((v, src)) if !v.trim().is_empty() => Some((
                mail::SmtpTarget::parse(v.trim()).map_err(|e| invalid("smtp_url", &src, e))?,
                src,
            )),
            _ => None,
        };
        // STARTTLS is required in production: reset links must not cross a network in clear.
        let st = take(
            "smtp_starttls",
            Some((env == Environment::Production).to_string()),
        )
        .unwrap_or_default();
        let smtp_starttls = boolean("smtp_starttls", &st)?;
        if env == Environment::Production && !smtp_starttls {
            findings.push(refuse(
                "smtp_starttls",
                &st.1,
                "production requires STARTTLS to the SMTP relay (mail carries reset links)".into(),
                "set smtp_starttls = true (or unset it) and use a relay that offers STARTTLS"
                    .into(),
            ));
        }
        let su = take("smtp_username", None).filter(|(v, _)| !v.is_empty());
        let sp = take("smtp_password", None).filter(|(v, _)| !v.is_empty());
        let smtp_auth = match (su, sp) {
            (Some((user, src)), Some((password, _))) => {
                if user.chars().any(|c| c.is_control()) {
                    return Err(invalid(
                        "smtp_username",
                        &src,
                        "must not hold control characters",
                    ));
                }
                if !smtp_starttls {
                    return Err(invalid(
                        "smtp_username",
                        &src,
                        "SMTP AUTH needs smtp_starttls = true: credentials are never sent in clear",
                    ));
                }
                Some(mail::SmtpAuth {
                    username: user,
                    password: SecretString::from(password),
                })
            }
            (Some((_, src)), None) => {
                return Err(invalid(
                    "smtp_username",
                    &src,
                    "needs smtp_password as well",
                ));
            }
            (None, Some((_, src))) => {
                return Err(invalid(
                    "smtp_password",
                    &src,
                    "needs smtp_username as well",
                ));
            }
            (None, None) => None,
        };
        let smtp_ca_file = match take("smtp_ca_file", None) {
            Some((v, src)) if !v.trim().is_empty() => {
                let path = PathBuf::from(v.trim());
                if !path.is_file() {
                    return Err(invalid(
                        "smtp_ca_file",
                        &src,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
                Some(path)
            }
            _ => None,
        };
        let smtp = match smtp {
            Some((mut target, _)) => {
                target.starttls = smtp_starttls;
                target.auth = smtp_auth;
                target.ca_file = smtp_ca_file;
                Some(target)
            }
            None => None,
        };
        let mf = take("mail_from", Some("kasho@localhost".into())).unwrap_or_default();
        if !mail::valid_from(&mf.0) {
            return Err(invalid(
                "mail_from",
                &mf.1,
                format!("`{}` is not a plain email address", mf.0),
            ));
        }
        let pu = take("public_url", Some(format!("http://{listen}"))).unwrap_or_default();
        let public_url = pu.0.trim_end_matches('/').to_owned();
        if !(public_url.starts_with("https://") || public_url.starts_with("http://"))
            || public_url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "public_url",
                &pu.1,
                "expected an http:// or https:// URL",
            ));
        }
        // Emailed links carry secrets (reset tokens): in production they must be https.
        if env == Environment::Production && !public_url.starts_with("https://") {
            findings.push(refuse(
                "public_url",
                &pu.1,
                format!(
                    "production requires an https:// public_url (emailed links carry secrets); `{public_url}` is not"
                ),
                "set KASHO_PUBLIC_URL to the https:// address clients reach Kasho at".into(),
            ));
        }
        let ma = take("mail_max_attempts", Some("8".into())).unwrap_or_default();
        let mail_max_attempts = int("mail_max_attempts", &ma, 1u32, 50)?;
        let retention = {
            use crate::domain::processing::RetentionPolicy as R;
            let d = R::DEFAULT;
            let sr = take("session_retention_days", Some(d.session_days.to_string()))
                .unwrap_or_default();
            let ir = take(
                "idempotency_retention_hours",
                Some(d.idempotency_hours.to_string()),
            )
            .unwrap_or_default();
            let ar =
                take("audit_retention_days", Some(d.audit_days.to_string())).unwrap_or_default();
            let ri = take(
                "retention_interval_seconds",
                Some(d.interval_seconds.to_string()),
            )
            .unwrap_or_default();
            R {
                session_days: int("session_retention_days", &sr, 1u32, 3650)?,
                idempotency_hours: int("idempotency_retention_hours", &ir, 0u32, 8760)?,
                audit_days: int("audit_retention_days", &ar, 1u32, 36_500)?,
                interval_seconds: int("retention_interval_seconds", &ri, 60u32, 86_400)?,
            }
        };

        let alerts = {
            use alerts::{AlertSettings, MIN_SECRET_BYTES, WebhookTarget};
            let webhook = match take("alert_webhook_url", None) {
                Some((v, src)) if !v.trim().is_empty() => Some(
                    WebhookTarget::parse(&v).map_err(|e| invalid("alert_webhook_url", &src, e))?,
                ),
                _ => None,
            };
            let mut secrets = Vec::new();
            for key in ["alert_webhook_secret", "alert_webhook_secret_previous"] {
                if let Some((v, src)) = take(key, None).filter(|(v, _)| !v.is_empty()) {
                    if v.len() < MIN_SECRET_BYTES {
                        return Err(invalid(
                            key,
                            &src,
                            format!("must be at least {MIN_SECRET_BYTES} bytes"),
                        ));
                    }
                    if key == "alert_webhook_secret_previous" && secrets.is_empty() {
                        return Err(invalid(key, &src, "needs alert_webhook_secret as well"));
                    }
                    secrets.push(SecretString::from(v));
                }
            }
            if webhook.is_some() && secrets.is_empty() {
                let src = l
                    .get("alert_webhook_url")
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                return Err(invalid(
                    "alert_webhook_url",
                    &src,
                    "needs alert_webhook_secret (at least 32 bytes) to sign the alerts",
                ));
            }
            let sev = take("alert_min_severity", Some("high".into())).unwrap_or_default();
            let min_severity =
                crate::domain::security::Severity::parse(sev.0.trim()).ok_or_else(|| {
                    invalid(
                        "alert_min_severity",
                        &sev.1,
                        format!("`{}`: expected low, medium or high", sev.0),
                    )
                })?;
            let ca_file = match take("alert_webhook_ca_file", None) {
                Some((v, src)) if !v.trim().is_empty() => {
                    let path = PathBuf::from(v.trim());
                    if !path.is_file() {
                        return Err(invalid(
                            "alert_webhook_ca_file",
                            &src,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                    Some(path)
                }
                _ => None,
            };
            AlertSettings {
                webhook,
                secrets,
                min_severity,
                ca_file,
            }
        };
        let metrics_listen = match take("metrics_listen", None) {
            Some((v, src)) if !v.trim().is_empty() => {
                Some(v.trim().parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "metrics_listen",
                        &src,
                        format!("`{v}` is not a host:port address"),
                    )
                })?)
            }
            _ => None,
        };
        let metrics_token = match take("metrics_token", None) {
            Some((v, src)) if !v.is_empty() => {
                if v.len() < 32 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "metrics_token",
                        &src,
                        "must be at least 32 bytes without whitespace",
                    ));
                }
                Some(SecretString::from(v))
            }
            _ => None,
        };
        if env == Environment::Production {
            let source_of = |key: &str| l.get_any(key).map(|(_, s)| s.clone()).unwrap_or_default();
            production_findings(
                &mut findings,
                &ProductionView {
                    data_dir: &data_dir,
                    jwt_configured: jwt_signing_key.is_some(),
                    master_configured: master_key.is_some(),
                    tls_key: tls.as_ref().map(|t| t.key.as_path()),
                    mfa_required_roles: &mfa_required_roles,
                    trusted_proxies: &trusted_proxies,
                    intrusion_exempt: &limits.intrusion_exempt,
                    metrics_listen,
                    metrics_token: metrics_token.is_some(),
                },
                &source_of,
            );
            // A secret's file (`KASHO_<KEY>_FILE`), or the config file when it holds a secret.
            for (key, (_, src)) in &l.values {
                let path = match src {
                    Source::SecretFile { path, .. } => Some(path),
                    Source::File(path) if key_def(key).is_some_and(|d| d.secret) => Some(path),
                    _ => None,
                };
                if let Some(path) = path
                    && let Some(mode) = loose_mode(path)
                {
                    findings.push(refuse(
                        key,
                        src,
                        format!(
                            "the file holding the secret is mode {mode:04o}: group or others may read it"
                        ),
                        format!(
                            "chmod 600 {} and make the service's user its owner (on Kubernetes, \
                             defaultMode: 0400 on the secret volume)",
                            path.display()
                        ),
                    ));
                }
            }
        }
        // A password on the command line is visible to every local user in `ps` and stays in
        // shell history: warned about in every environment.
        if matches!(db_v.1, Source::Flag(_)) && url_has_password(&db_v.0) {
            findings.push(Finding {
                key: "database_url",
                origin: db_v.1.to_string(),
                refused: false,
                problem: "the URL on the command line holds a password, which every local user \
                          can read in the process list (ps) and shell history keeps"
                    .into(),
                fix: "pass the URL in KASHO_DATABASE_URL_FILE (a file of mode 0600) or \
                      KASHO_DATABASE_URL, not --database-url"
                    .into(),
            });
        }
        Ok(Config {
            env,
            listen,
            data_dir,
            database_url: SecretString::from(db_v.0),
            database_max_connections,
            jwt_signing_key,
            master_key,
            jwt_issuer: jwt_issuer.0,
            jwt_audience: jwt_audience.0,
            access_token_ttl_seconds,
            refresh_token_ttl_seconds,
            idempotency_ttl_seconds,
            key_rotate_after_encryptions,
            mfa_required_roles,
            trusted_proxies,
            login_ip_max_failures,
            login_ip_window_seconds,
            smtp,
            mail_from: mf.0,
            public_url,
            mail_max_attempts,
            api_token_rotation_overlap_seconds,
            tls,
            platform_admin_client_cert,
            tls_reload_interval_seconds,
            tls_handshake_timeout_seconds,
            allow_plain_http,
            max_header_bytes,
            header_read_timeout_seconds,
            redis,
            limits,
            argon2,
            max_concurrent_hashes,
            max_body_bytes,
            request_timeout_seconds,
            log_format,
            log_level: ll.0,
            retention,
            alerts,
            metrics_listen,
            metrics_token,
            report,
            findings,
        })
    }

    /// Whether responses carry `Strict-Transport-Security`: when serving TLS, and in production
    /// behind a TLS-terminating proxy (`allow_plain_http`).
    pub fn hsts(&self) -> bool {
        self.tls.is_some() || (self.env == Environment::Production && self.allow_plain_http)
    }

    /// Whether `kasho serve` may listen as configured: production refuses plain HTTP unless
    /// `allow_plain_http` says a proxy in front terminates TLS. `Ok(Some(_))` is a warning to log.
    pub fn transport_check(&self) -> Result<Option<String>, String> {
        match (self.tls.is_some(), self.env, self.allow_plain_http) {
            (false, Environment::Production, false) => Err(
                "production refuses to serve plain HTTP: set KASHO_TLS_CERT_FILE and \
                 KASHO_TLS_KEY_FILE, or, when a proxy in front terminates TLS, \
                 KASHO_ALLOW_PLAIN_HTTP=true"
                    .into(),
            ),
            (false, Environment::Production, true) => Ok(Some(
                "serving plain HTTP in production (allow_plain_http = true): TLS must be \
                 terminated by the proxy in front of Kasho, and only that proxy may reach this port"
                    .into(),
            )),
            _ => Ok(None),
        }
    }

    /// Whether missing keys may be generated (embedded development mode only).
    pub fn may_generate_keys(&self) -> bool {
        self.env == Environment::Development
    }

    /// The database URL with any password hidden, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact("database_url", self.database_url.expose_secret())
    }

    /// What `config check` and start-up say about the retention configuration: a configured
    /// audit retention below the 12-month floor is raised to it.
    pub fn retention_notes(&self) -> Vec<String> {
        use crate::domain::processing::AUDIT_MINIMUM_RETENTION_DAYS;
        let mut notes = Vec::new();
        if self.retention.audit_clamped() {
            let source = self
                .report
                .iter()
                .find(|(k, _, _)| *k == "audit_retention_days")
                .map_or("-", |(_, _, s)| s.as_str());
            notes.push(format!(
                "audit_retention_days = {} (from {source}) is below the {AUDIT_MINIMUM_RETENTION_DAYS}-day minimum; \
                 audit records are kept {} days",
                self.retention.audit_days,
                self.retention.audit_days_effective()
            ));
        }
        notes
    }

    /// Every known key with its help text.
    pub fn documented_keys() -> impl Iterator<Item = (&'static str, bool, &'static str)> {
        KEYS.iter().map(|k| (k.name, k.secret, k.help))
    }
}

/// What the production checks look at.
struct ProductionView<'a> {
    data_dir: &'a Path,
    jwt_configured: bool,
    master_configured: bool,
    tls_key: Option<&'a Path>,
    mfa_required_roles: &'a [crate::domain::authz::Role],
    trusted_proxies: &'a [crate::domain::security::Cidr],
    intrusion_exempt: &'a [crate::domain::security::Cidr],
    metrics_listen: Option<SocketAddr>,
    metrics_token: bool,
}

/// The settings production refuses (or warns about) beyond what parsing already refused
/// (issue 14 item 8).
fn production_findings(
    out: &mut Vec<Finding>,
    v: &ProductionView<'_>,
    source_of: &dyn Fn(&str) -> Source,
) {
    use crate::crypto::keys::{JWT_KEY_FILE, MASTER_KEY_FILE};
    use crate::domain::security::{WIDEST_TRUSTED_V4_PREFIX, WIDEST_TRUSTED_V6_PREFIX};
    let finding = |key: &'static str, refused: bool, problem: String, fix: String| Finding {
        key,
        origin: source_of(key).to_string(),
        refused,
        problem,
        fix,
    };
    // Keys: only from configuration, never the development keys `serve` generates.
    for (configured, key, file, env, make) in [
        (
            v.jwt_configured,
            "jwt_signing_key",
            JWT_KEY_FILE,
            "KASHO_JWT_SIGNING_KEY_FILE",
            "an Ed25519 PKCS#8 PEM: `openssl genpkey -algorithm ed25519`",
        ),
        (
            v.master_configured,
            "master_key",
            MASTER_KEY_FILE,
            "KASHO_MASTER_KEY_FILE",
            "32 random bytes in base64: `openssl rand -base64 32`",
        ),
    ] {
        if configured {
            continue;
        }
        let dev = v.data_dir.join("keys").join(file);
        let problem = if dev.exists() {
            format!(
                "not set, so the development key {} (generated into the data directory) \
                 would be used",
                dev.display()
            )
        } else {
            "not set, and production never generates keys".to_owned()
        };
        out.push(Finding {
            origin: String::new(),
            ..finding(
                key,
                true,
                problem,
                format!(
                    "set {env} to a file of mode 0600 outside the data directory holding {make} \
                     (KASHO_{} works too)",
                    key.to_ascii_uppercase()
                ),
            )
        });
    }
    if let Some(path) = v.tls_key
        && let Some(mode) = loose_mode(path)
    {
        out.push(finding(
            "tls_key_file",
            true,
            format!(
                "{} is mode {mode:04o}: group or others may read the TLS private key",
                path.display()
            ),
            format!(
                "chmod 600 {} and make the service's user its owner",
                path.display()
            ),
        ));
    }
    if !v
        .mfa_required_roles
        .contains(&crate::domain::authz::Role::PlatformAdmin)
    {
        out.push(finding(
            "mfa_required_roles",
            true,
            "does not name PLATFORM_ADMIN, so platform admins (who manage every tenant) could \
             sign in with a password alone"
                .into(),
            "include PLATFORM_ADMIN (the default is MANAGER,COMPLIANCE_OFFICER,PLATFORM_ADMIN), \
             or unset the key"
                .into(),
        ));
    }
    for (key, list, consequence) in [
        (
            "trusted_proxies",
            v.trusted_proxies,
            "any client in it can forge its address with X-Forwarded-For, and with it the \
             allow-lists, rate limits, bans and audit records that rely on the address",
        ),
        (
            "intrusion_exempt",
            v.intrusion_exempt,
            "clients in it are never banned, whatever they do",
        ),
    ] {
        let wide: Vec<String> = list
            .iter()
            .filter(|c| c.is_too_wide())
            .map(ToString::to_string)
            .collect();
        if !wide.is_empty() {
            out.push(finding(
                key,
                true,
                format!(
                    "{} is wider than /{WIDEST_TRUSTED_V4_PREFIX} (IPv4) or \
                     /{WIDEST_TRUSTED_V6_PREFIX} (IPv6): {consequence}",
                    wide.join(", ")
                ),
                "name only the networks of your own proxies or operators (for example \
                 192.0.2.0/24 or 2001:db8:1::/48)"
                    .into(),
            ));
        }
    }
    if let Some(addr) = v.metrics_listen
        && !addr.ip().is_loopback()
    {
        out.push(finding(
            "metrics_listen",
            false,
            format!(
                "{addr} is not a loopback address and the metrics listener asks for no token{}: \
                 anyone who reaches it reads the service's metrics",
                if v.metrics_token {
                    " (metrics_token guards the main listener only)"
                } else {
                    ""
                }
            ),
            "bind metrics_listen to 127.0.0.1 (scrape through a local agent), or unset it and \
             scrape GET /metrics on the main listener with metrics_token"
                .into(),
        ));
    }
}

/// The permission bits of `path` when group or others have any access to it (Unix only).
fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
            .filter(|m| m & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Whether a database URL carries a password (`user:password@` or `password=`).
fn url_has_password(url: &str) -> bool {
    let authority_password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(creds, _)| creds.split_once(':').is_some_and(|(_, pw)| !pw.is_empty()));
    let query_password = url.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.strip_prefix("password=").is_some_and(|v| !v.is_empty()))
    });
    authority_password || query_password
}

/// Shows a secret's presence, never its value; a database URL keeps everything but its password.
fn redact(key: &str, value: &str) -> String {
    if key == "database_url" || key == "redis_url" {
        if let Some((scheme, rest)) = value.split_once("://")
            && let Some((creds, host)) = rest.split_once('@')
        {
            let user = creds.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
        return value.to_owned();
    }
    "(set, hidden)".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Production with its keys configured (values are checked when the keys are loaded).
    const PROD_KEYS: [(&str, &str); 3] = [
        ("env", "production"),
        ("jwt_signing_key", "pem"),
        ("master_key", "b64"),
    ];

    fn err(pairs: &[(&str, &str)]) -> String {
        Config::from_pairs(pairs)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let c = Config::from_pairs(&[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.env, Environment::Development);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.database_url.expose_secret(),
            "sqlite://./kasho-data/kasho.db"
        );
        assert_eq!(c.access_token_ttl_seconds, 3600);
        assert_eq!(c.argon2, HashParams::OWASP_MINIMUM);
        assert_eq!(c.request_timeout_seconds, 30);
    }

    #[test]
    fn errors_name_key_and_source() {
        let e = err(&[("listen", "nonsense")]);
        assert!(e.contains("`listen`") && e.contains("flag --listen"), "{e}");
        let e = err(&[("access_token_ttl_seconds", "5")]);
        assert!(e.contains("outside 300..=86400"), "{e}");
        let e = err(&[("env", "production"), ("argon2_memory_kib", "1024")]);
        assert!(e.contains("OWASP"), "{e}");
        let e = err(&[("request_timeout_seconds", "0")]);
        assert!(e.contains("outside 1..=3600"), "{e}");
        let e = err(&[("no_such_key", "1")]);
        assert!(e.contains("unknown configuration key"), "{e}");
    }

    #[test]
    fn env_layer_and_secret_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("mk");
        std::fs::write(&path, "c2VjcmV0\n").unwrap_or_default();
        let mut l = Layers::default();
        l.load_env([
            ("KASHO_LISTEN".to_owned(), "0.0.0.0:9000".to_owned()),
            (
                "KASHO_MASTER_KEY_FILE".to_owned(),
                path.display().to_string(),
            ),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        l.set(
            "listen",
            "127.0.0.1:9001".into(),
            Source::Flag("listen".into()),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let c = Config::from_layers(&l).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:9001", "flags win over env");
        let (mk, src) = c.master_key.unwrap_or_else(|| unreachable!());
        assert_eq!(mk.expose_secret(), "c2VjcmV0");
        assert!(src.contains("KASHO_MASTER_KEY_FILE"), "{src}");

        let mut both = Layers::default();
        let e = both
            .load_env([
                ("KASHO_MASTER_KEY".to_owned(), "x".to_owned()),
                ("KASHO_MASTER_KEY_FILE".to_owned(), "y".to_owned()),
            ])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("set only one"), "{e}");
    }

    #[test]
    fn toml_file_layer() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("kasho.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\naccess_token_ttl_seconds = 900\n",
        )
        .unwrap_or_default();
        let mut l = Layers::default();
        l.load_file(&path).unwrap_or_else(|e| unreachable!("{e}"));
        let c = Config::from_layers(&l).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.access_token_ttl_seconds, 900);
        std::fs::write(&path, "access_token_ttl_seconds = 1\n").unwrap_or_default();
        let mut l = Layers::default();
        l.load_file(&path).unwrap_or_else(|e| unreachable!("{e}"));
        let e = Config::from_layers(&l)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("config file"), "{e}");
    }

    #[test]
    fn tls_keys_come_in_pairs_and_client_certificates_need_a_client_ca() {
        let c = Config::from_pairs(&[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(c.tls.is_none() && !c.hsts() && !c.platform_admin_client_cert);
        assert!(matches!(c.transport_check(), Ok(None)));
        // `tls_cert_file` is a key of its own, not a secret read from a file.
        let mut l = Layers::default();
        l.load_env([
            (
                "KASHO_TLS_CERT_FILE".to_owned(),
                "/etc/kasho/cert.pem".to_owned(),
            ),
            (
                "KASHO_TLS_KEY_FILE".to_owned(),
                "/etc/kasho/key.pem".to_owned(),
            ),
            (
                "KASHO_TLS_CLIENT_CA_FILE".to_owned(),
                "/etc/kasho/ca.pem".to_owned(),
            ),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        let c = Config::from_layers(&l).unwrap_or_else(|e| unreachable!("{e}"));
        let tls = c.tls.clone().unwrap_or_else(|| unreachable!());
        assert_eq!(tls.cert, PathBuf::from("/etc/kasho/cert.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/kasho/ca.pem")));
        assert!(
            c.hsts() && c.platform_admin_client_cert,
            "on by default with a client CA"
        );
        let e = err(&[("tls_cert_file", "/c.pem")]);
        assert!(e.contains("tls_key_file must be set"), "{e}");
        let e = err(&[("tls_key_file", "/k.pem")]);
        assert!(e.contains("tls_cert_file must be set"), "{e}");
        let e = err(&[("tls_client_ca_file", "/ca.pem")]);
        assert!(e.contains("client certificates need HTTPS"), "{e}");
        let e = err(&[("platform_admin_client_cert", "true")]);
        assert!(e.contains("requires tls_client_ca_file"), "{e}");
        let e = err(&[("allow_plain_http", "maybe")]);
        assert!(e.contains("expected true or false"), "{e}");
        let e = err(&[("max_header_bytes", "100")]);
        assert!(e.contains("outside 8192..=1048576"), "{e}");
        // Production: plain HTTP only behind a TLS proxy, which still gets HSTS.
        let prod = ("public_url", "https://pay.example.com");
        let mut p = PROD_KEYS.to_vec();
        p.push(prod);
        let c = Config::from_pairs(&p).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(c.transport_check().is_err());
        p.push(("allow_plain_http", "true"));
        let c = Config::from_pairs(&p).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(c.transport_check(), Ok(Some(_))) && c.hsts());
    }

    #[test]
    fn production_mail_needs_https_links_and_starttls_and_auth_stays_inside_tls() {
        // public_url: https in production (the default http://<listen> is refused too).
        let e = err(&[("env", "production")]);
        assert!(
            e.contains("`public_url`") && e.contains("production requires an https://"),
            "{e}"
        );
        let e = err(&[
            ("env", "production"),
            ("public_url", "http://pay.example.com"),
        ]);
        assert!(e.contains("production requires an https://"), "{e}");
        let mut prod = PROD_KEYS.to_vec();
        prod.push(("public_url", "https://pay.example.com/"));
        let c = Config::from_pairs(&prod).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.public_url, "https://pay.example.com");
        // Development keeps plain links and plain SMTP by default.
        let c = Config::from_pairs(&[("smtp_url", "smtp://127.0.0.1:2525")])
            .unwrap_or_else(|e| unreachable!("{e}"));
        let t = c.smtp.as_ref().unwrap_or_else(|| unreachable!());
        assert!(!t.starttls && t.auth.is_none());
        // Production: STARTTLS on by default, and refusing it is refused.
        let mut p = prod.clone();
        p.push(("smtp_url", "smtp://mail.example.com:587"));
        let c = Config::from_pairs(&p).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(c.smtp.as_ref().is_some_and(|t| t.starttls));
        let mut off = p.clone();
        off.push(("smtp_starttls", "false"));
        let e = err(&off);
        assert!(
            e.contains("`smtp_starttls`") && e.contains("production requires STARTTLS"),
            "{e}"
        );
        // AUTH: both halves, and only with STARTTLS (never in clear, even in development).
        let e = err(&[("smtp_url", "smtp://x:25"), ("smtp_username", "kasho")]);
        assert!(e.contains("needs smtp_password"), "{e}");
        let e = err(&[("smtp_url", "smtp://x:25"), ("smtp_password", "pw")]);
        assert!(e.contains("needs smtp_username"), "{e}");
        let e = err(&[
            ("smtp_url", "smtp://x:25"),
            ("smtp_username", "kasho"),
            ("smtp_password", "hunter2-hunter2"),
        ]);
        assert!(e.contains("never sent in clear"), "{e}");
        let c = Config::from_pairs(&[
            ("smtp_url", "smtp://x:587"),
            ("smtp_starttls", "true"),
            ("smtp_username", "kasho"),
            ("smtp_password", "hunter2-hunter2"),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        let t = c.smtp.as_ref().unwrap_or_else(|| unreachable!());
        let shown = format!("{t:?}");
        assert!(
            t.starttls && shown.contains("kasho") && !shown.contains("hunter2"),
            "{shown}"
        );
        let shown = c
            .report
            .iter()
            .find(|(k, _, _)| *k == "smtp_password")
            .map(|(_, v, _)| v.clone());
        assert_eq!(shown.as_deref(), Some("(set, hidden)"));
        let e = err(&[("smtp_ca_file", "/nonexistent/ca.pem")]);
        assert!(e.contains("`smtp_ca_file`"), "{e}");
    }

    #[test]
    fn rate_limit_keys_parse_default_and_refuse_nonsense() {
        let c = Config::from_pairs(&[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(c.redis.is_none(), "in process by default");
        assert_eq!(c.limits.ip.to_string(), "3000/60");
        assert_eq!(c.limits.password_reset.to_string(), "5/300");
        assert_eq!(c.limits.intrusion_ban_seconds, 900);
        let c = Config::from_pairs(&[
            ("rate_limit_login", " 3 / 30 "),
            ("redis_url", "redis://:hunter2@cache:6379/2"),
            ("intrusion_exempt", "10.0.0.0/8, 2001:db8::/32"),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.limits.login.to_string(), "3/30");
        assert_eq!(c.limits.intrusion_exempt.len(), 2);
        let redis = c.redis.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!(redis.key_prefix, "kasho:");
        let shown = c
            .report
            .iter()
            .find(|(k, _, _)| *k == "redis_url")
            .map(|(_, v, _)| v.clone())
            .unwrap_or_default();
        assert_eq!(shown, "redis://:***@cache:6379/2");
        for (key, value, says) in [
            ("rate_limit_ip", "600", "expected N/S"),
            ("rate_limit_ip", "0/60", "N must be"),
            ("rate_limit_credential", "10/0", "S must be"),
            ("rate_limit_tenant", "-1/60", "expected N/S"),
            ("rate_limit_mfa", "ten/60", "expected N/S"),
            ("rate_limit_refresh", "10/60/2", "expected N/S"),
            ("intrusion_error_burst", "5/100000", "S must be"),
            ("intrusion_ban_seconds", "5", "outside 60..=604800"),
            ("intrusion_exempt", "10.0.0.0/33", "CIDR"),
            ("redis_url", "http://cache:6379", "redis://"),
            ("redis_url", "rediss://cache:6379", "not supported"),
            ("redis_key_prefix", "has space", "printable"),
        ] {
            let e = err(&[(key, value)]);
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(says),
                "{key}={value}: {e}"
            );
        }
    }

    #[test]
    fn alert_metrics_and_redis_keys_validate() {
        let c = Config::from_pairs(&[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(c.alerts.webhook.is_none() && c.metrics_listen.is_none());
        assert_eq!(
            c.alerts.min_severity,
            crate::domain::security::Severity::High
        );
        let secret = "s".repeat(32);
        let c = Config::from_pairs(&[
            ("alert_webhook_url", "https://hooks.example.com/kasho"),
            ("alert_webhook_secret", &secret),
            ("alert_webhook_secret_previous", &secret),
            ("alert_min_severity", "medium"),
            ("metrics_listen", "127.0.0.1:9464"),
            ("metrics_token", &secret),
            ("redis_url", "redis://127.0.0.1:6379/0"),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.alerts.secrets.len(), 2);
        assert_eq!(c.metrics_listen.map(|a| a.port()), Some(9464));
        let shown: Vec<_> = c
            .report
            .iter()
            .filter(|(k, _, _)| k.starts_with("alert_webhook_secret") || *k == "metrics_token")
            .map(|(_, v, _)| v.as_str())
            .collect();
        assert_eq!(shown, ["(set, hidden)"; 3]);

        let e = err(&[("alert_webhook_url", "https://hooks.example.com/")]);
        assert!(
            e.contains("`alert_webhook_url`") && e.contains("alert_webhook_secret"),
            "{e}"
        );
        let e = err(&[
            ("alert_webhook_url", "https://hooks.example.com/"),
            ("alert_webhook_secret", "short"),
        ]);
        assert!(
            e.contains("`alert_webhook_secret`") && e.contains("32 bytes"),
            "{e}"
        );
        let e = err(&[
            ("alert_webhook_url", "ftp://x"),
            ("alert_webhook_secret", &secret),
        ]);
        assert!(e.contains("http:// or https://"), "{e}");
        let e = err(&[("alert_min_severity", "critical")]);
        assert!(e.contains("`alert_min_severity`"), "{e}");
        let e = err(&[("metrics_token", "short")]);
        assert!(e.contains("`metrics_token`"), "{e}");
        let e = err(&[("metrics_listen", "nowhere")]);
        assert!(e.contains("`metrics_listen`"), "{e}");
        let e = err(&[("redis_url", "http://user:hunter2@x/")]);
        assert!(e.contains("`redis_url`") && !e.contains("hunter2"), "{e}");
    }

    /// Every insecure production setting is refused together, each naming its key and fix
    /// (issue 14 item 8).
    #[test]
    fn production_refuses_every_insecure_setting_at_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let data = dir.path().display().to_string();
        // Development keys in the data directory, as `serve` generates them.
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap_or_default();
        std::fs::write(keys.join("jwt-signing-key.pem"), "pem").unwrap_or_default();
        let base = [
            ("env", "production"),
            ("public_url", "https://pay.example.com"),
            ("data_dir", data.as_str()),
        ];
        let mut bad = base.to_vec();
        bad.extend([
            ("mfa_required_roles", ""),
            ("trusted_proxies", "10.0.0.0/8, 0.0.0.0/0"),
            ("intrusion_exempt", "::/0"),
            ("metrics_listen", "0.0.0.0:9464"),
        ]);
        let e = err(&bad);
        for (key, says) in [
            ("jwt_signing_key", "development key"),
            ("jwt_signing_key", "KASHO_JWT_SIGNING_KEY_FILE"),
            ("master_key", "never generates keys"),
            ("master_key", "KASHO_MASTER_KEY_FILE"),
            ("mfa_required_roles", "include PLATFORM_ADMIN"),
            ("trusted_proxies", "0.0.0.0/0 is wider than /8"),
            ("intrusion_exempt", "::/0 is wider than"),
        ] {
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(says),
                "{key}: {says}: {e}"
            );
        }
        assert!(e.contains("refuses 5 insecure settings"), "{e}");
        assert!(!e.contains("`metrics_listen`"), "only a warning: {e}");
        assert!(!e.contains("10.0.0.0/8"), "a private /8 is fine: {e}");
        // Unchecked (what `config check` reads), the warning is there too.
        let mut l = Layers::default();
        for (k, v) in &bad {
            l.set(k, (*v).to_owned(), Source::Flag((*k).to_owned()))
                .unwrap_or_else(|e| unreachable!("{e}"));
        }
        let c = Config::from_layers_unchecked(&l).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.findings.iter().filter(|f| f.refused).count(), 5);
        let warned: Vec<_> = c.warnings().map(|f| f.key).collect();
        assert_eq!(warned, ["metrics_listen"]);
        // Development accepts all of it.
        let mut dev = bad.clone();
        dev[0] = ("env", "development");
        dev[1] = ("public_url", "http://127.0.0.1:8080");
        let c = Config::from_pairs(&dev).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(c.findings.is_empty(), "{:?}", c.findings);

        // Secret files and the TLS key readable by group or others.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let set_mode = |p: &Path, mode: u32| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                    .unwrap_or_default();
            };
            let mk = dir.path().join("mk");
            let tls_key = dir.path().join("key.pem");
            for f in [&mk, &tls_key] {
                std::fs::write(f, "x").unwrap_or_default();
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))
                    .unwrap_or_default();
            }
            // A config file holding a secret is held to the same rule.
            let toml = dir.path().join("kasho.toml");
            std::fs::write(
                &toml,
                "env = \"production\"\npublic_url = \"https://pay.example.com\"\n\
                 jwt_signing_key = \"pem\"\nmaster_key = \"b64\"\n",
            )
            .unwrap_or_default();
            set_mode(&toml, 0o640);
            let mut l = Layers::default();
            l.load_file(&toml).unwrap_or_else(|e| unreachable!("{e}"));
            let e = Config::from_layers(&l)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("`jwt_signing_key` (from config file")
                    && e.contains("`master_key` (from config file")
                    && e.contains("mode 0640"),
                "{e}"
            );
            set_mode(&toml, 0o600);
            assert!(Config::from_layers(&l).is_ok());

            let mk_path = mk.display().to_string();
            let key_path = tls_key.display().to_string();
            let mut l = Layers::default();
            for (k, v) in [
                ("env", "production"),
                ("public_url", "https://pay.example.com"),
                ("jwt_signing_key", "pem"),
                ("master_key_file", mk_path.as_str()),
                ("tls_cert_file", "/etc/kasho/cert.pem"),
                ("tls_key_file", key_path.as_str()),
            ] {
                l.set(
                    k,
                    v.to_owned(),
                    Source::Env(format!("KASHO_{}", k.to_uppercase())),
                )
                .unwrap_or_else(|e| unreachable!("{e}"));
            }
            let e = Config::from_layers(&l)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("`master_key`")
                    && e.contains("KASHO_MASTER_KEY_FILE")
                    && e.contains("mode 0644")
                    && e.contains(&format!("chmod 600 {mk_path}")),
                "{e}"
            );
            assert!(
                e.contains("`tls_key_file`") && e.contains(&format!("chmod 600 {key_path}")),
                "{e}"
            );
            for f in [&mk, &tls_key] {
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))
                    .unwrap_or_default();
            }
            assert!(Config::from_layers(&l).is_ok());
        }
    }

    #[test]
    fn a_database_password_on_the_command_line_is_warned_about() {
        let c = Config::from_pairs(&[("database_url", "postgres://kasho:hunter2@db/kasho")])
            .unwrap_or_else(|e| unreachable!("{e}"));
        let w: Vec<String> = c.warnings().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("`database_url`")
                && w[0].contains("KASHO_DATABASE_URL_FILE")
                && !w[0].contains("hunter2"),
            "{w:?}"
        );
        for quiet in [
            "postgres://kasho@db/kasho",
            "postgres://db/kasho?sslmode=require",
            "sqlite://./kasho-data/kasho.db",
        ] {
            let c = Config::from_pairs(&[("database_url", quiet)])
                .unwrap_or_else(|e| unreachable!("{e}"));
            assert_eq!(c.warnings().count(), 0, "{quiet}");
        }
        assert!(url_has_password("postgres://db/kasho?user=k&password=pw"));
        // From the environment, the password is not on the command line.
        let mut l = Layers::default();
        l.load_env([(
            "KASHO_DATABASE_URL".to_owned(),
            "postgres://kasho:hunter2@db/kasho".to_owned(),
        )])
        .unwrap_or_else(|e| unreachable!("{e}"));
        let c = Config::from_layers(&l).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.warnings().count(), 0);
    }

    #[test]
    fn database_url_password_is_hidden() {
        assert_eq!(
            redact("database_url", "postgres://kasho:hunter2@db:5432/kasho"),
            "postgres://kasho:***@db:5432/kasho"
        );
    }

    #[test]
    fn retention_keys_default_validate_and_clamp_the_audit_floor() {
        let c = Config::from_pairs(&[]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            c.retention,
            crate::domain::processing::RetentionPolicy::DEFAULT
        );
        assert!(c.retention_notes().is_empty());
        let c = Config::from_pairs(&[
            ("audit_retention_days", "1"),
            ("session_retention_days", "7"),
        ])
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.retention.session_days, 7);
        assert_eq!(c.retention.audit_days, 1);
        assert_eq!(c.retention.audit_days_effective(), 366);
        let notes = c.retention_notes().join("\n");
        assert!(
            notes.contains("audit_retention_days = 1")
                && notes.contains("flag --audit_retention_days")
                && notes.contains("kept 366 days"),
            "{notes}"
        );
        let e = err(&[("session_retention_days", "0")]);
        assert!(
            e.contains("`session_retention_days`") && e.contains("outside 1..=3650"),
            "{e}"
        );
        let e = err(&[("audit_retention_days", "a year")]);
        assert!(
            e.contains("`audit_retention_days`") && e.contains("not a whole number"),
            "{e}"
        );
        let e = err(&[("retention_interval_seconds", "5")]);
        assert!(e.contains("`retention_interval_seconds`"), "{e}");
    }
}
