//! Alert settings parsed from configuration: the webhook target, its signing secrets and the
//! lowest severity alerted. `service::alerts` delivers with them.

use std::path::PathBuf;

use secrecy::SecretString;

use crate::domain::security::Severity;

/// The shortest accepted signing secret.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where alerts are POSTed: an `http://` or `https://` URL without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl WebhookTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the URL contains whitespace or control characters".into());
        }
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("expected an http:// or https:// URL".into());
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let path = path.split('#').next().unwrap_or("/").to_owned();
        if authority.contains('@') {
            return Err(
                "credentials in the URL are not supported; sign with alert_webhook_secret".into(),
            );
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{p}` is not a port"))?,
                None if after.is_empty() => default_port,
                None => return Err("unexpected text after the IPv6 address".into()),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("`{p}` is not a port"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err("the URL names no host or port".into());
        }
        Ok(Self {
            https,
            host,
            port,
            path,
        })
    }

    /// `scheme://host:port` (no path: a path may carry a receiver's token).
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Alert configuration.
#[derive(Clone)]
pub struct AlertSettings {
    /// The webhook; `None`: alerts are only logged.
    pub webhook: Option<WebhookTarget>,
    /// Signing secrets, the current one first (a previous one during a roll).
    pub secrets: Vec<SecretString>,
    pub min_severity: Severity,
    /// A PEM bundle that replaces the default trust roots for an HTTPS webhook.
    pub ca_file: Option<PathBuf>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            webhook: None,
            secrets: Vec::new(),
            min_severity: Severity::High,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for AlertSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSettings")
            .field("webhook", &self.webhook.as_ref().map(WebhookTarget::origin))
            .field("secrets", &self.secrets.len())
            .field("min_severity", &self.min_severity)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}
