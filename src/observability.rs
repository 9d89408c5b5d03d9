//! Metrics: the process-wide Prometheus recorder and the series Kasho records.
//!
//! The recorder is installed once per process ([`install`], behind a `OnceLock`: a test binary
//! builds many cores) and rendered as Prometheus text by the `/metrics` endpoints. Labels are
//! bounded sets only (route templates, status codes, event types, outcomes), never ids, paths
//! or personal data.
//!
//! | series | labels |
//! | --- | --- |
//! | `kasho_http_requests_total` | `method`, `route` (the matched template, `(unmatched)` otherwise), `status` |
//! | `kasho_http_request_duration_seconds` (histogram) | `method`, `route` |
//! | `kasho_auth_failures_total` | `reason` (the security event type) |
//! | `kasho_transfers_total` | `outcome` (`posted`, `refused` by the ledger, `replayed`) |
//! | `kasho_security_alerts_total` | `severity` |
//! | `kasho_alert_deliveries_total` | `outcome` (`delivered`, `retry`, `failed`) |
//! | `kasho_db_pool_connections`, `kasho_db_pool_idle` (gauges) | — |
//! | `kasho_credential_verifications_total` | `kind` (`password`, `totp`, `recovery_code`) |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::security::{SecurityEvent, Severity};

pub const HTTP_REQUESTS: &str = "kasho_http_requests_total";
pub const HTTP_DURATION: &str = "kasho_http_request_duration_seconds";
pub const AUTH_FAILURES: &str = "kasho_auth_failures_total";
pub const TRANSFERS: &str = "kasho_transfers_total";
pub const SECURITY_ALERTS: &str = "kasho_security_alerts_total";
pub const ALERT_DELIVERIES: &str = "kasho_alert_deliveries_total";
pub const DB_POOL_CONNECTIONS: &str = "kasho_db_pool_connections";
pub const DB_POOL_IDLE: &str = "kasho_db_pool_idle";
pub const CREDENTIAL_VERIFICATIONS: &str = "kasho_credential_verifications_total";

/// Latency buckets in seconds: 1 ms to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder on first use and returns its handle; `None` if another recorder
/// was installed first (then nothing can be rendered).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), &DURATION_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
                return None;
            }
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by method, route template and status"
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    metrics::describe_counter!(
        AUTH_FAILURES,
        "refused authentications (failed sign-ins, refused tokens, MFA failures) by reason"
    );
    metrics::describe_counter!(TRANSFERS, "money movements by outcome");
    metrics::describe_counter!(SECURITY_ALERTS, "security alerts raised by severity");
    metrics::describe_counter!(
        ALERT_DELIVERIES,
        "alert webhook delivery attempts by outcome"
    );
    metrics::describe_counter!(
        CREDENTIAL_VERIFICATIONS,
        "passwords and second-factor codes actually checked against an account, by kind \
         (a guess refused by the lockout or its delay is never checked)"
    );
    metrics::describe_gauge!(DB_POOL_CONNECTIONS, "open database pool connections");
    metrics::describe_gauge!(DB_POOL_IDLE, "idle database pool connections");
}

/// The current metrics in the Prometheus text format (`None`: no recorder).
pub fn render() -> Option<String> {
    let handle = install()?;
    let mut out = Vec::new();
    handle.render_to_write(&mut out).ok()?;
    String::from_utf8(out).ok()
}

/// Drains histogram windows so memory stays bounded between scrapes.
pub fn run_upkeep() {
    if let Some(h) = install() {
        h.run_upkeep();
    }
}

/// One served request.
pub fn http_request(method: &str, route: &str, status: u16, seconds: f64) {
    metrics::counter!(HTTP_REQUESTS, "method" => method.to_owned(), "route" => route.to_owned(),
        "status" => status.to_string())
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method.to_owned(), "route" => route.to_owned())
        .record(seconds);
}

/// The `reason` label of an authentication failure, if `kind` is one.
pub fn auth_failure_reason(kind: SecurityEvent) -> Option<&'static str> {
    match kind {
        SecurityEvent::LoginFailed
        | SecurityEvent::TokenRejected
        | SecurityEvent::MfaFailed
        | SecurityEvent::StepUpFailed
        | SecurityEvent::RefreshTokenReused
        | SecurityEvent::SignatureInvalid
        | SecurityEvent::PasswordResetFailed => Some(kind.as_str()),
        _ => None,
    }
}

/// Counts a recorded security event that is an authentication failure.
pub fn security_event(kind: SecurityEvent) {
    if let Some(reason) = auth_failure_reason(kind) {
        metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
    }
}

/// A security alert was raised.
pub fn security_alert(severity: Severity) {
    metrics::counter!(SECURITY_ALERTS, "severity" => severity.as_str()).increment(1);
}

/// One alert delivery attempt ended.
pub fn alert_delivery(outcome: &'static str) {
    metrics::counter!(ALERT_DELIVERIES, "outcome" => outcome).increment(1);
}

/// One money movement settled by the ledger (`posted`, `refused` or `replayed`).
pub fn transfer(outcome: &'static str) {
    metrics::counter!(TRANSFERS, "outcome" => outcome).increment(1);
}

/// The database pool's size, set at each scrape.
pub fn db_pool(connections: u32, idle: u32) {
    metrics::gauge!(DB_POOL_CONNECTIONS).set(f64::from(connections));
    metrics::gauge!(DB_POOL_IDLE).set(f64::from(idle));
}

/// What kind of credential a verification checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Password,
    Totp,
    RecoveryCode,
}

impl CredentialKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Totp => "totp",
            CredentialKind::RecoveryCode => "recovery_code",
        }
    }
}

/// The credential checks one core made (the process-wide series sums every core; a test
/// builds several cores in one process and reads its own here).
#[derive(Debug, Default)]
pub struct Verifications {
    password: std::sync::atomic::AtomicU64,
    totp: std::sync::atomic::AtomicU64,
    recovery_code: std::sync::atomic::AtomicU64,
}

impl Verifications {
    fn cell(&self, kind: CredentialKind) -> &std::sync::atomic::AtomicU64 {
        match kind {
            CredentialKind::Password => &self.password,
            CredentialKind::Totp => &self.totp,
            CredentialKind::RecoveryCode => &self.recovery_code,
        }
    }

    /// One credential is being checked (called by the checks themselves, never by callers).
    pub fn record(&self, kind: CredentialKind) {
        self.cell(kind)
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(CREDENTIAL_VERIFICATIONS, "kind" => kind.as_str()).increment(1);
    }

    /// How many credentials of `kind` this core has checked.
    pub fn count(&self, kind: CredentialKind) -> u64 {
        self.cell(kind).load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Where a money-moving request's time goes, accumulated per process so a benchmark can print
/// it per layer (`examples/ledger_bench`): a relaxed atomic addition per phase, nothing else.
pub mod phases {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// The layers a transfer crosses, in order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Phase {
        /// The JSON body read and decoded (`ApiJson`).
        Parse,
        /// Authentication, rate limits and the permission check (the `authorize` middleware,
        /// before the handler).
        Auth,
        /// The service: the request checked into ledger commands (`build_movement`).
        Prepare,
        /// The writer's transaction: loading the locked snapshot.
        Load,
        /// The ledger core's `plan` (the engine).
        Engine,
        /// The plan's rows written.
        Write,
        /// The audit records appended.
        Audit,
        /// The commit (the fsync).
        Commit,
    }

    pub const ALL: [Phase; 8] = [
        Phase::Parse,
        Phase::Auth,
        Phase::Prepare,
        Phase::Load,
        Phase::Engine,
        Phase::Write,
        Phase::Audit,
        Phase::Commit,
    ];

    impl Phase {
        pub const fn as_str(self) -> &'static str {
            match self {
                Phase::Parse => "parse",
                Phase::Auth => "auth",
                Phase::Prepare => "prepare",
                Phase::Load => "load",
                Phase::Engine => "engine",
                Phase::Write => "write",
                Phase::Audit => "audit",
                Phase::Commit => "commit",
            }
        }
    }

    static MICROS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

    /// Adds `spent` to `phase`'s total.
    pub fn record(phase: Phase, spent: Duration) {
        let us = u64::try_from(spent.as_micros()).unwrap_or(u64::MAX);
        MICROS[phase as usize].fetch_add(us, Ordering::Relaxed);
    }

    /// Every phase's total so far, in microseconds of wall time (summed over concurrent work).
    pub fn snapshot() -> [(Phase, u64); 8] {
        ALL.map(|p| (p, MICROS[p as usize].load(Ordering::Relaxed)))
    }
}
