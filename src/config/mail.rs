//! Mail settings parsed from configuration: the SMTP relay (`smtp_url`) and its credentials,
//! and the check of the `From` address. `service::mail` delivers with them.

use std::path::PathBuf;

/// An SMTP server, from `smtp://host[:port]` (port 25 by default), and how to talk to it.
#[derive(Debug, Clone)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    /// Upgrade with STARTTLS before anything else is sent, and give up (retrying later) when
    /// the server does not offer it: never fall back to plain text.
    pub starttls: bool,
    /// Credentials for AUTH (sent only inside TLS).
    pub auth: Option<SmtpAuth>,
    /// PEM bundle trusted for the server's certificate instead of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
}

/// SMTP AUTH credentials (`Debug` shows the user name only).
#[derive(Clone)]
pub struct SmtpAuth {
    pub username: String,
    pub password: secrecy::SecretString,
}

impl std::fmt::Debug for SmtpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpAuth")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

impl SmtpTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("smtp://") else {
            return Err(if url.starts_with("smtps://") {
                "smtps:// (TLS) is not supported; use smtp://host:port to a local or private relay"
                    .into()
            } else {
                "expected smtp://host[:port]".into()
            });
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') || rest.contains('/') || rest.contains('?') {
            return Err(
                "expected smtp://host[:port]; user names, paths and options are not supported"
                    .into(),
            );
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port"))?;
                (h, port)
            }
            _ => (rest, 25),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the host is missing".into());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            starttls: false,
            auth: None,
            ca_file: None,
        })
    }
}

/// Checks an address for the `From` header: one plain address, nothing a header could be
/// split with.
pub fn valid_from(addr: &str) -> bool {
    let ok_chars = addr
        .chars()
        .all(|c| !c.is_control() && !c.is_whitespace() && !"<>,;\"()[]\\".contains(c));
    ok_chars
        && addr
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls() {
        let t = SmtpTarget::parse("smtp://127.0.0.1:2525").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 2525));
        let t = SmtpTarget::parse("smtp://mail.example").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((t.host.as_str(), t.port), ("mail.example", 25));
        let t = SmtpTarget::parse("smtp://[::1]:25").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(t.host, "::1");
        assert!(SmtpTarget::parse("smtps://x:465").is_err());
        assert!(SmtpTarget::parse("http://x").is_err());
        assert!(SmtpTarget::parse("smtp://u:p@x:25").is_err());
        assert!(SmtpTarget::parse("smtp://x:0").is_err());
        assert!(SmtpTarget::parse("smtp://").is_err());
    }

    #[test]
    fn from_addresses_cannot_split_headers() {
        assert!(valid_from("kasho@example.com"));
        assert!(!valid_from("a@b\r\nBcc: x@y"));
        assert!(!valid_from("Kasho <a@b>"));
        assert!(!valid_from("nobody"));
    }
}
