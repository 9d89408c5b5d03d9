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
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// Loads (or, in development, generates) the key material, warning about generated files.
pub fn load_keys(config: &Config) -> Result<KeyMaterial, StartError> {
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

/// [`build_core`] with pre-commit checks installed at the ledger's check point (KYC limits and
/// monitoring rules will be registered here).
pub async fn build_core_with_checks(
    config: &Config,
    clock: Arc<dyn Clock>,
    migrate: bool,
    checks: Vec<Arc<dyn crate::domain::ledger::PreCommitCheck>>,
) -> Result<Arc<Core>, StartError> {
    if !config.argon2.meets_minimum() {
        tracing::warn!(
            memory_kib = config.argon2.memory_kib,
            iterations = config.argon2.iterations,
            parallelism = config.argon2.parallelism,
            "password hashing is below the OWASP minimum (m=19456 KiB, t=2, p=1); acceptable for tests only"
        );
    }
    let keys = load_keys(config)?;
    let sealer = audit_sealer(&keys);
    let store = crate::store::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
        sealer.clone(),
    )
    .await?;
    if migrate {
        for m in store.migrate().await? {
            tracing::info!(migration = %m, backend = store.backend(), "applied migration");
        }
    }
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
            request_timeout_seconds: config.request_timeout_seconds,
        },
        api_token_key: crate::service::api_tokens::TokenHashKey::new(
            keys.master.derive("api-token-hash/v1"),
        ),
        ledger: crate::service::ledger::LedgerWriter::start(store.clone()),
        keyring: Arc::new(crate::service::keys::Keyring::new(
            store.clone(),
            clock.clone(),
            &keys.master,
            config.key_rotate_after_encryptions,
        )),
        inflight: crate::service::ledger::InFlight::default(),
        kyc: crate::service::kyc::KycGate::default(),
        checks,
        store,
    }))
}

/// Runs the server until Ctrl-C or SIGTERM, then drains in-flight requests.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let core = build_core(&config, Arc::new(SystemClock), true).await?;
    let app = crate::http::router(core.clone(), config.max_body_bytes);
    spawn_retention(core.clone(), &config);
    spawn_mail_delivery(core.clone());
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
    tracing::info!(
        listen = %addr,
        env = config.env.as_str(),
        backend = core.store.backend(),
        database = %config.database_url_redacted(),
        "kasho is serving"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| StartError::Other(e.to_string()))?;
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
