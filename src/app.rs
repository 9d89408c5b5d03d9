//! Assembly: configuration → keys → storage → use-case core → HTTP router → listener, and the
//! background retention job.

use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::jwt::TokenKeys;
use crate::crypto::keys::{KeyMaterial, KeySources};
use crate::crypto::password::PasswordHasher;
use crate::domain::audit::AuditSealer;
use crate::service::{Core, Settings};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] crate::crypto::keys::KeyError),
    /// The configured keys are not the ones the database was initialised with.
    #[error(transparent)]
    KeyProof(#[from] crate::service::key_proof::KeyProofError),
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// What [`open_database`] does besides proving the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Apply pending migrations (after the proof), and record the root key check if missing.
    Migrate,
    /// Record the root key check if the database has none (a command that writes).
    Record,
    /// Read only (`kasho audit verify`, `kasho keys status`).
    ReadOnly,
    /// `kasho keys adopt-jwt-key`: the root key is proven, the JWT key is the one to adopt.
    AdoptJwtKey,
}

/// Loads the key material and opens the database, proving the keys against it before anything
/// is migrated or written: every command that opens the database goes through here. In
/// development, missing keys are generated only for a database that holds none.
pub async fn open_database(
    config: &Config,
    opening: Opening,
    may_generate: bool,
    now_micros: i64,
) -> Result<(KeyMaterial, Arc<dyn crate::store::Store>), StartError> {
    use crate::crypto::keys::KeyError;
    use crate::service::key_proof;
    let keys = match KeyMaterial::load(&key_sources(config, false)) {
        Ok(keys) => keys,
        Err(KeyError::Missing { what, .. }) if may_generate && config.may_generate_keys() => {
            // Generating is only for a database that holds nothing sealed by a root key.
            let probe = open_store(config).await?;
            if probe.holds_keys().await? {
                let root = probe
                    .root_key_check()
                    .await?
                    .map(|c| format!(" (root id {})", c.root_id))
                    .unwrap_or_default();
                return Err(key_proof::KeyProofError::WouldGenerate {
                    what,
                    dir: config.data_dir.join("keys").display().to_string(),
                    root,
                }
                .into());
            }
            drop(probe);
            load_keys(config)?
        }
        Err(e) => return Err(e.into()),
    };
    let sealer = audit_sealer(&keys);
    let store = crate::store::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
        sealer.clone(),
    )
    .await?;
    let kid = crate::crypto::jwt::key_id(keys.jwt.public_key());
    let adopting = opening == Opening::AdoptJwtKey;
    key_proof::prove(
        store.as_ref(),
        &keys.master,
        (!adopting).then_some(kid.as_str()),
        &sealer,
    )
    .await?;
    if opening == Opening::Migrate {
        for m in store.migrate().await? {
            tracing::info!(migration = %m, backend = store.backend(), "applied migration");
        }
    }
    if matches!(opening, Opening::Migrate | Opening::Record) {
        key_proof::record(store.as_ref(), &keys.master, &kid, now_micros).await?;
    }
    Ok((keys, store))
}

/// Loads (or, in development, generates) the key material, warning about generated files.
/// Only [`open_database`] calls it, once it knows the database holds no keys.
fn load_keys(config: &Config) -> Result<KeyMaterial, StartError> {
    let keys = KeyMaterial::load(&key_sources(config, config.may_generate_keys()))?;
    for path in &keys.generated {
        tracing::warn!(
            path = %path.display(),
            "generated missing key material for development use (mode 0600); \
             in production provide KASHO_JWT_SIGNING_KEY_FILE and KASHO_MASTER_KEY_FILE instead"
        );
    }
    Ok(keys)
}

/// Opens storage without key material, for commands that never write audit records
/// (`kasho migrate`).
pub async fn open_store(config: &Config) -> Result<Arc<dyn crate::store::Store>, StartError> {
    // A sealer is required by the type but never used: migrations append no audit records.
    let unused = AuditSealer::new([0; 32]);
    Ok(crate::store::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
        unused,
    )
    .await?)
}

/// Where the configuration says keys come from.
pub fn key_sources(config: &Config, may_generate: bool) -> KeySources<'_> {
    KeySources {
        jwt_pem: config.jwt_signing_key.as_ref().map(|(k, s)| (k, s.clone())),
        master_b64: config.master_key.as_ref().map(|(k, s)| (k, s.clone())),
        data_dir: &config.data_dir,
        may_generate,
    }
}

/// The audit-chain key, derived from the master key.
pub fn audit_sealer(keys: &KeyMaterial) -> AuditSealer {
    AuditSealer::new(keys.master.derive("audit-chain/v1"))
}

/// Opens storage and builds the use-case core. Migrations are applied when `migrate` is set.
pub async fn build_core(
    config: &Config,
    clock: Arc<dyn Clock>,
    migrate: bool,
) -> Result<Arc<Core>, StartError> {
    build_core_with_checks(config, clock, migrate, Vec::new()).await
}

/// [`build_core`] with pre-commit checks installed at the ledger core's check point
/// (transaction-monitoring rules will be registered here): the writer runs them on every
/// movement inside the posting transaction.
pub async fn build_core_with_checks(
    config: &Config,
    clock: Arc<dyn Clock>,
    migrate: bool,
    checks: Vec<Arc<dyn crate::domain::ledger::PreCommitCheck>>,
) -> Result<Arc<Core>, StartError> {
    let checks = crate::domain::ledger::Checks(checks);
    if !config.argon2.meets_minimum() {
        tracing::warn!(
            memory_kib = config.argon2.memory_kib,
            iterations = config.argon2.iterations,
            parallelism = config.argon2.parallelism,
            "password hashing is below the OWASP minimum (m=19456 KiB, t=2, p=1); acceptable for tests only"
        );
    }
    let (keys, store) = open_database(
        config,
        if migrate {
            Opening::Migrate
        } else {
            Opening::Record
        },
        true,
        clock.now().as_micros(),
    )
    .await?;
    let sealer = audit_sealer(&keys);
    crate::observability::install();
    store.set_alert_routing(crate::store::alerts::AlertRouting {
        min_severity: config.alerts.min_severity,
        outbox: config.alerts.webhook.is_some(),
    });
    let alert_webhook =
        crate::service::alerts::WebhookClient::new(&config.alerts).map_err(StartError::Other)?;
    let tokens = TokenKeys::new(&keys.jwt, &config.jwt_issuer, &config.jwt_audience)
        .map_err(StartError::Other)?;
    let hasher = PasswordHasher::new(config.argon2, config.max_concurrent_hashes)
        .map_err(|e| StartError::Other(e.to_string()))?;
    Ok(Arc::new(Core {
        clock: clock.clone(),
        hasher,
        tokens,
        sealer,
        settings: Settings {
            access_token_ttl_seconds: config.access_token_ttl_seconds,
            refresh_token_ttl_seconds: config.refresh_token_ttl_seconds,
            idempotency_ttl_seconds: config.idempotency_ttl_seconds,
            retention: config.retention,
            default_policy: crate::domain::security::SecurityPolicy {
                mfa_required_roles: config.mfa_required_roles.clone(),
                session_absolute_lifetime_seconds: u32::try_from(config.refresh_token_ttl_seconds)
                    .unwrap_or(u32::MAX)
                    .min(crate::domain::security::bounds::SESSION_ABSOLUTE_SECONDS.1),
                ..Default::default()
            },
            trusted_proxies: config.trusted_proxies.clone(),
            login_ip_rule: crate::store::security::FailureRule {
                window_seconds: config.login_ip_window_seconds,
                threshold: config.login_ip_max_failures,
                lock_seconds: config.login_ip_window_seconds,
            },
            mail: crate::service::mail::MailSettings {
                smtp: config.smtp.clone(),
                from: config.mail_from.clone(),
                public_url: config.public_url.clone(),
                mailbox_dir: config.data_dir.join("mailbox"),
                max_attempts: config.mail_max_attempts,
            },
            api_token_rotation_overlap_seconds: config.api_token_rotation_overlap_seconds,
            hsts: config.hsts(),
            platform_admin_client_cert: config.platform_admin_client_cert,
            limits: config.limits.clone(),
            alerts: config.alerts.clone(),
            metrics_token: config.metrics_token.clone(),
            request_timeout_seconds: config.request_timeout_seconds,
            max_header_bytes: config.max_header_bytes,
        },
        limits: crate::service::ratelimit::RateLimiter::new(config.redis.as_ref())
            .map_err(StartError::Other)?,
        api_token_key: crate::service::api_tokens::TokenHashKey::new(
            keys.master.derive("api-token-hash/v1"),
        ),
        throttle_key: crate::service::security::ThrottleKey::new(
            keys.master
                .derive(crate::service::security::ThrottleKey::PURPOSE),
        ),
        login_email_key: crate::service::security::LoginEmailKey::new(
            keys.master
                .derive(crate::service::security::LoginEmailKey::PURPOSE),
        ),
        ledger: crate::service::ledger::LedgerWriter::start(store.clone(), checks),
        keyring: Arc::new(crate::service::keys::Keyring::new(
            store.clone(),
            clock.clone(),
            &keys.master,
            config.key_rotate_after_encryptions,
        )),
        inflight: crate::service::ledger::InFlight::default(),
        budgets: crate::service::budgets::BudgetGate::default(),
        kyc: crate::service::kyc::KycGate::default(),
        alert_webhook,
        verifications: Default::default(),
        session_cache: crate::service::session_cache::SessionCache::start(&store),
        store,
        storage: crate::service::health::StorageHealth::default(),
    }))
}

/// How long in-flight requests may take to finish after SIGTERM or Ctrl-C before the
/// remaining connections are closed.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the server until Ctrl-C or SIGTERM, then drains in-flight requests (at most
/// [`SHUTDOWN_GRACE`]). Serves HTTPS when TLS files are configured, plain HTTP otherwise
/// (refused in production unless `allow_plain_http`).
pub async fn serve(config: Config) -> Result<(), StartError> {
    match config.transport_check() {
        Err(msg) => return Err(StartError::Other(msg)),
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Ok(None) => {}
    }
    // Parse the TLS files before anything else starts: a bad certificate stops start-up.
    let tls = match &config.tls {
        Some(files) => {
            let loaded = crate::tls::load(files).map_err(|e| StartError::Other(e.to_string()))?;
            Some((files.clone(), loaded))
        }
        None => None,
    };
    let core = build_core(&config, Arc::new(SystemClock), true).await?;
    // Users who held a forbidden pair of roles before the rule: flagged at every start-up.
    match crate::service::duties::flag_forbidden_pairs(&core).await {
        Ok(flagged) if !flagged.is_empty() => tracing::warn!(
            users = flagged.len(),
            "users hold roles that may not be held together; see the warnings above and the \
             forbidden_role_pair security events"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not check users for forbidden pairs of roles"),
    }
    // Identifiers stored in clear before they were sealed (customers' external references):
    // sealed under each customer's key, so an erasure shreds them (issue 14).
    match crate::service::privacy::seal_legacy_identifiers(&core).await {
        Ok(n) if n > 0 => tracing::info!(
            sealed = n,
            "customers' external references sealed under their own keys"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not seal legacy external references; retried at the next start")
        }
    }
    // Logins written before `users.email_hash` (migration 0022): hashed for lookup, and a
    // customer's login's email sealed under the login's own key (issue 14 item 5).
    match crate::service::users::seal_login_emails(&core).await {
        Ok(n) if n > 0 => tracing::info!(
            converted = n,
            "logins' emails hashed for lookup; customers' logins' emails sealed under their own keys"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not convert logins' emails; retried at the next start")
        }
    }
    let app = crate::http::router(core.clone(), config.max_body_bytes);
    spawn_retention(core.clone(), &config);
    spawn_mail_delivery(core.clone());
    tracing::info!(
        backend = if core.limits.shared() {
            "redis"
        } else {
            "in-process"
        },
        "rate limits and intrusion bans"
    );
    spawn_alert_delivery(core.clone());
    spawn_metrics_listener(core.clone(), &config).await?;
    // Key maintenance: finishes rotations left unfinished (an interrupted `kasho keys`
    // command, or a data key rotated automatically when its encryption budget ran out).
    let keeper = core.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            match keeper.keyring.run_pending().await {
                Ok(n) if n > 0 => tracing::info!(moved = n, "key rotation work finished"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "key maintenance failed; retrying in a minute")
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    let handle = axum_server::Handle::<SocketAddr>::new();
    let draining = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "shutting down: no new connections, draining in-flight requests"
        );
        draining.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let header_timeout =
        std::time::Duration::from_secs(u64::from(config.header_read_timeout_seconds));
    let mut server = axum_server::Server::<SocketAddr>::from_listener(listener)
        .handle(handle)
        // Also bounds hyper's protocol detection, which the header timeout does not cover.
        .first_request_timeout(header_timeout)
        .accept_error_handler(|peer, e| {
            tracing::debug!(peer = ?peer, error = %e, "connection refused before its first request")
        });
    // Connection limits, for HTTP/1 and HTTP/2 alike: the header block size, the time to send
    // it (slow clients), keep-alive, and HTTP/2 stream and header-list limits.
    let builder = server.http_builder();
    // Request heads are checked before hyper reads them (`http::wire`: size, header count,
    // syntax, Host), so that even those refusals come in the error shape; hyper's own limits
    // stay behind it as a backstop it never reaches.
    let max_head = config.max_header_bytes;
    builder
        .http1()
        .max_buf_size(max_head.saturating_mul(2))
        .max_headers(crate::http::wire::MAX_HEADERS)
        // Runs whenever the server waits for a request head, so it also closes idle
        // keep-alive connections.
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .max_concurrent_streams(100)
        // Up to the ceiling an oversized header list reaches the application, which answers
        // 431 in the error shape; beyond it the h2 layer answers (bare 431, stream reset).
        .max_header_list_size(
            u32::try_from(max_head.saturating_mul(crate::http::wire::H2_HEADER_LIST_CEILING))
                .unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        Some((files, loaded)) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(loaded.config.clone());
            crate::tls::spawn_reloader(
                rustls.clone(),
                files.clone(),
                &loaded,
                std::time::Duration::from_secs(u64::from(config.tls_reload_interval_seconds)),
            );
            tracing::info!(
                listen = %addr,
                env = config.env.as_str(),
                backend = core.store.backend(),
                database = %config.database_url_redacted(),
                certificate_sha256 = %loaded.fingerprint,
                client_certificates = files.client_ca.is_some(),
                platform_admin_client_cert = config.platform_admin_client_cert,
                "kasho is serving HTTPS"
            );
            let acceptor = crate::tls::ClientCertAcceptor::new(
                rustls,
                std::time::Duration::from_secs(u64::from(config.tls_handshake_timeout_seconds)),
            );
            server
                .acceptor(crate::http::wire::GuardAcceptor::new(acceptor, max_head))
                .serve(make)
                .await
        }
        None => {
            tracing::info!(
                listen = %addr,
                env = config.env.as_str(),
                backend = core.store.backend(),
                database = %config.database_url_redacted(),
                "kasho is serving plain HTTP"
            );
            server
                .acceptor(crate::http::wire::GuardAcceptor::new(
                    axum_server::accept::DefaultAcceptor,
                    max_head,
                ))
                .serve(make)
                .await
        }
    };
    served.map_err(|e| StartError::Other(e.to_string()))?;
    tracing::info!("kasho stopped");
    Ok(())
}

/// Runs the retention job every `retention_interval_seconds` (the first run at start-up). It
/// purges ended sessions, expired idempotency records and audit records past retention; a live
/// session or key is never touched.
fn spawn_retention(core: Arc<Core>, config: &Config) {
    for note in config.retention_notes() {
        tracing::warn!("{note}");
    }
    let every = std::time::Duration::from_secs(u64::from(config.retention.interval_seconds));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match crate::service::retention::run_once(&core, core.clock.now()).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the retention job failed; it runs again at the next interval")
                }
            }
        }
    });
}

/// Delivers the mail outbox every few seconds (claims are conditional updates, so several
/// instances may run it against one database).
fn spawn_mail_delivery(core: Arc<Core>) {
    match &core.settings.mail.smtp {
        Some(t) => tracing::info!(host = %t.host, port = t.port, "mail is delivered over SMTP"),
        None => tracing::warn!(
            mailbox = %core.settings.mail.mailbox_dir.display(),
            "no smtp_url configured: outgoing mail is written to the mailbox folder, not sent"
        ),
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = crate::service::mail::deliver_due(&core).await {
                tracing::warn!(error = %e, "mail delivery pass failed; it runs again shortly");
            }
        }
    });
}

/// Delivers the security-alert outbox every few seconds (claims are conditional updates, so
/// several instances may run it against one database).
fn spawn_alert_delivery(core: Arc<Core>) {
    let settings = &core.settings.alerts;
    match &core.alert_webhook {
        Some(w) => tracing::info!(
            webhook = %w.target().origin(),
            min_severity = settings.min_severity.as_str(),
            secrets = settings.secrets.len(),
            "security alerts are delivered to the webhook and logged"
        ),
        None => {
            tracing::info!(
                min_severity = settings.min_severity.as_str(),
                "no alert_webhook_url configured: security alerts are only logged (target kasho::alert)"
            );
            return;
        }
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = crate::service::alerts::deliver_due(&core).await {
                tracing::warn!(error = %e, "alert delivery pass failed; it runs again shortly");
            }
        }
    });
}

/// Starts the metrics listener (only `GET /metrics`) when `metrics_listen` is set, and the
/// recorder's upkeep.
async fn spawn_metrics_listener(core: Arc<Core>, config: &Config) -> Result<(), StartError> {
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            ticks.tick().await;
            crate::observability::run_upkeep();
        }
    });
    let Some(addr) = config.metrics_listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {addr} (metrics_listen): {e}")))?;
    tracing::info!(listen = %addr, "metrics are served at GET /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, crate::http::metrics_router(core)).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
