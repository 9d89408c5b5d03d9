//! Security alerts to a signed webhook.
//!
//! Every security event at or above `alert_min_severity` is an alert: the audit append (the one
//! choke point every security event passes, see `store::alerts`) logs it at `warn` with target
//! `kasho::alert` and, while `alert_webhook_url` is set, writes an outbox row in the event's own
//! transaction. [`deliver_due`] (run by `kasho serve` every few seconds, by tests directly)
//! claims due alerts with a conditional update and POSTs each as JSON with
//! `Kasho-Event-Id: evt_…` and `Kasho-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! (one `v1` per configured secret during a roll, the current one first). A non-2xx answer or
//! a network error is retried with exponential back-off (30 s doubling, at most 1 h) until
//! three days after the event; then the alert is marked failed and an error is logged.
//!
//! The HTTP client is a minimal HTTP/1.1 one (one request per connection) over tokio and
//! tokio-rustls, with connect and response timeouts; HTTPS trusts the Mozilla roots
//! (webpki-roots) or only the PEM bundle in `alert_webhook_ca_file`.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Core;
use crate::clock::Timestamp;
use crate::config::alerts::{AlertSettings, WebhookTarget};
use crate::error::AppResult;
use crate::store::alerts::AlertRecord;
use crate::store::outbox::Delivery;

/// First retry after this long; doubles each attempt.
pub const BASE_BACKOFF_SECONDS: i64 = 30;
/// Retries are at most this far apart.
pub const MAX_BACKOFF_SECONDS: i64 = 3_600;
/// An alert not delivered within this long after its event is given up.
pub const GIVE_UP_AFTER_SECONDS: i64 = 3 * 86_400;
/// A claimed alert is leased for this long (a worker that dies releases it after).
const LEASE_SECONDS: i64 = 60;
const BATCH: i64 = 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

// `WebhookTarget` is parsed by configuration (`config::alerts`); what only delivery needs is here.
impl WebhookTarget {
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.https { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// `t=<t>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 of `"<t>.<body>"` under each secret.
pub fn signature_header(secrets: &[SecretString], t: i64, body: &[u8]) -> String {
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let mut header = format!("t={t}");
    for s in secrets {
        let mac = crate::crypto::hmac_sha256(s.expose_secret().as_bytes(), &signed);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac));
    }
    header
}

/// What a receiver does: accepts the header when its timestamp is within `tolerance_seconds` of
/// `now` and any `v1` matches the HMAC under `secret` (compared in constant time).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_seconds: i64,
) -> bool {
    use subtle::ConstantTimeEq;
    let mut t: Option<i64> = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => sigs.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now_unix - t).abs() > tolerance_seconds {
        return false;
    }
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = hex::encode(crate::crypto::hmac_sha256(secret, &signed));
    sigs.iter()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
}

/// Seconds until the next attempt after `attempts` failed ones: 30 s doubling, at most 1 h.
pub fn backoff_seconds(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    BASE_BACKOFF_SECONDS
        .saturating_mul(1i64 << exp)
        .min(MAX_BACKOFF_SECONDS)
}

/// The webhook client: the target, its TLS configuration and the signing secrets.
pub struct WebhookClient {
    target: WebhookTarget,
    tls: Option<tokio_rustls::TlsConnector>,
    secrets: Vec<SecretString>,
}

impl WebhookClient {
    /// `None` when no webhook is configured.
    pub fn new(settings: &AlertSettings) -> Result<Option<Self>, String> {
        let Some(target) = settings.webhook.clone() else {
            return Ok(None);
        };
        if settings.secrets.is_empty() {
            return Err("alert_webhook_url needs alert_webhook_secret".into());
        }
        let tls = if target.https {
            Some(tls_connector(settings.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Some(Self {
            target,
            tls,
            secrets: settings.secrets.clone(),
        }))
    }

    pub fn target(&self) -> &WebhookTarget {
        &self.target
    }

    /// POSTs one alert; `Ok(status)` for any HTTP answer, `Err` for a network error or timeout.
    async fn post(&self, event_id: &str, body: &[u8], now_unix: i64) -> Result<u16, String> {
        let signature = signature_header(&self.secrets, now_unix, body);
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kasho-alerts/1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nKasho-Event-Id: {event_id}\r\nKasho-Signature: {signature}\r\n\
             Connection: close\r\n\r\n",
            self.target.path,
            self.target.host_header(),
            body.len(),
        )
        .into_bytes();
        request.extend_from_slice(body);
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timeout".to_owned())?
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(tcp, &request).await,
            Some(connector) => {
                let name = rustls_pki_types::ServerName::try_from(self.target.host.clone())
                    .map_err(|_| "invalid TLS server name".to_owned())?;
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake timeout".to_owned())?
                    .map_err(|e| format!("TLS: {}", e.kind()))?;
                exchange(tls, &request).await
            }
        }
    }
}

/// The TLS client configuration of outgoing connections (the alert webhook, SMTP STARTTLS):
/// TLS 1.2+ through rustls, trusting the Mozilla roots or only the PEM bundle `ca_file`.
pub(crate) fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Writes the request and reads the status line (the body is not needed).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<u16, String> {
    let io = async {
        s.write_all(request).await?;
        s.flush().await?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(RESPONSE_TIMEOUT, io)
        .await
        .map_err(|_| "response timeout".to_owned())?
        .map_err(|e| format!("io: {}", e.kind()))?;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err("not an HTTP response".into()),
    }
}

/// What one delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertDeliveryCounts {
    pub delivered: u32,
    pub retried: u32,
    pub failed: u32,
}

/// Delivers every alert due now: one pass, as `kasho serve` runs it periodically (tests call
/// it directly after moving the clock). Nothing happens without a configured webhook.
pub async fn deliver_due(core: &Core) -> AppResult<AlertDeliveryCounts> {
    let mut counts = AlertDeliveryCounts::default();
    let Some(client) = core.alert_webhook.as_ref() else {
        return Ok(counts);
    };
    // A bounded number of batches: retried alerts are not due again within the pass.
    for _ in 0..50 {
        let now = core.clock.now();
        let batch = core
            .store
            .claim_alerts(now, now.plus_seconds(LEASE_SECONDS), BATCH)
            .await?;
        if batch.is_empty() {
            break;
        }
        for alert in batch {
            let outcome = attempt(core, client, &alert).await;
            match &outcome {
                Delivery::Done => {
                    counts.delivered += 1;
                    crate::observability::alert_delivery("delivered");
                    tracing::info!(alert_id = %alert.id, security_event = %alert.event_type,
                        attempts = alert.attempts, "security alert delivered");
                }
                Delivery::Retry {
                    next_attempt_at,
                    error,
                } => {
                    counts.retried += 1;
                    crate::observability::alert_delivery("retry");
                    tracing::warn!(alert_id = %alert.id, security_event = %alert.event_type,
                        attempts = alert.attempts, error = %error, retry_at = %next_attempt_at.to_rfc3339(),
                        "security alert delivery failed; will retry");
                }
                Delivery::Failed { error } => {
                    counts.failed += 1;
                    crate::observability::alert_delivery("failed");
                    tracing::error!(target: "kasho::alert", alert_id = %alert.id,
                        security_event = %alert.event_type, severity = %alert.severity,
                        attempts = alert.attempts, error = %error,
                        "security alert could not be delivered for 3 days; giving up");
                }
            }
            core.store
                .finish_alert(&alert.id, core.clock.now(), &outcome)
                .await?;
        }
    }
    Ok(counts)
}

async fn attempt(core: &Core, client: &WebhookClient, alert: &AlertRecord) -> Delivery {
    let now = core.clock.now();
    let result = client
        .post(&alert.id, alert.payload.as_bytes(), now.unix_seconds())
        .await;
    let error = match result {
        Ok(status) if (200..300).contains(&status) => return Delivery::Done,
        Ok(status) => format!("HTTP {status}"),
        Err(e) => e,
    };
    let next = now.plus_seconds(backoff_seconds(alert.attempts));
    let give_up_at = Timestamp::from_micros(alert.created_at).plus_seconds(GIVE_UP_AFTER_SECONDS);
    if next > give_up_at {
        Delivery::Failed { error }
    } else {
        Delivery::Retry {
            next_attempt_at: next,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body_with_one_v1_per_secret() {
        let body = br#"{"id":"evt_1"}"#;
        let current = "c".repeat(32);
        let previous = "p".repeat(32);
        let h = signature_header(&[secret(&current)], 1_700_000_000, body);
        let mac = hex::encode(crate::crypto::hmac_sha256(
            current.as_bytes(),
            br#"1700000000.{"id":"evt_1"}"#,
        ));
        assert_eq!(h, format!("t=1700000000,v1={mac}"));
        assert!(verify_signature(
            current.as_bytes(),
            &h,
            body,
            1_700_000_100,
            300
        ));
        // Outside the tolerance, another body, or another secret: refused.
        assert!(!verify_signature(
            current.as_bytes(),
            &h,
            body,
            1_700_000_301,
            300
        ));
        assert!(!verify_signature(
            current.as_bytes(),
            &h,
            b"{}",
            1_700_000_000,
            300
        ));
        assert!(!verify_signature(
            previous.as_bytes(),
            &h,
            body,
            1_700_000_000,
            300
        ));
        // During a roll both secrets verify.
        let rolled = signature_header(&[secret(&current), secret(&previous)], 1_700_000_000, body);
        assert_eq!(rolled.matches(",v1=").count(), 2);
        assert!(rolled.starts_with(&h));
        assert!(verify_signature(
            current.as_bytes(),
            &rolled,
            body,
            1_700_000_000,
            300
        ));
        assert!(verify_signature(
            previous.as_bytes(),
            &rolled,
            body,
            1_700_000_000,
            300
        ));
        assert!(!verify_signature(
            current.as_bytes(),
            "v1=00",
            body,
            1_700_000_000,
            300
        ));
    }

    #[test]
    fn backoff_doubles_from_30_seconds_to_an_hour() {
        assert_eq!(backoff_seconds(1), 30);
        assert_eq!(backoff_seconds(2), 60);
        assert_eq!(backoff_seconds(3), 120);
        assert_eq!(backoff_seconds(7), 1_920);
        assert_eq!(backoff_seconds(8), 3_600);
        assert_eq!(backoff_seconds(500), 3_600);
    }

    #[test]
    fn webhook_urls_parse_and_refuse_credentials() {
        let t = WebhookTarget::parse("https://hooks.example.com/kasho?x=1")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/kasho?x=1")
        );
        assert_eq!(t.origin(), "https://hooks.example.com:443");
        let t =
            WebhookTarget::parse("http://127.0.0.1:9000").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            (t.port, t.path.as_str(), t.host_header().as_str()),
            (9000, "/", "127.0.0.1:9000")
        );
        let t = WebhookTarget::parse("http://[::1]:81/a").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            (t.host.as_str(), t.port, t.host_header().as_str()),
            ("::1", 81, "[::1]:81")
        );
        for bad in [
            "ftp://x",
            "https://user:pw@x/",
            "http://:80/",
            "http://x:nope/",
            "http://x y/",
            "",
        ] {
            assert!(WebhookTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
