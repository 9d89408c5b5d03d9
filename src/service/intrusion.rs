//! Intrusion signals: a burst of 401/403/404 answers to one client address, or one request for
//! a path only a vulnerability scanner asks for, bans the address for `intrusion_ban_seconds`.
//! Bans live where the rate-limit buckets live (Redis when configured, with the same outage
//! fallback; in process otherwise). Addresses in `intrusion_exempt` are never banned.

use std::net::IpAddr;

use super::ratelimit::{Bucket, Class};
use super::{AuditBuilder, Core, RequestMeta};
use crate::clock::Timestamp;
use crate::domain::audit::Outcome;
use crate::domain::security::SecurityEvent;

/// Why an address was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    /// More 401/403/404 answers than `intrusion_error_burst` allows.
    Burst,
    /// A request for a scanner path.
    ScannerPath,
}

impl BanReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            BanReason::Burst => "burst",
            BanReason::ScannerPath => "scanner_path",
        }
    }
}

/// Path segments (compared case-insensitively) that Kasho never serves and scanners probe:
/// secrets and VCS folders, PHP applications, admin consoles of other stacks.
const SCANNER_SEGMENTS: &[&str] = &[
    ".env",
    ".git",
    ".svn",
    ".hg",
    ".aws",
    ".ssh",
    ".docker",
    ".htaccess",
    ".htpasswd",
    ".ds_store",
    "wp-admin",
    "wp-login.php",
    "wp-content",
    "wp-includes",
    "xmlrpc.php",
    "phpmyadmin",
    "phpunit",
    "server-status",
    "actuator",
    "cgi-bin",
    "boaform",
];

/// Path segment prefixes scanners probe (`/.env.local`, `/.env.production`, `/.git-credentials`).
const SCANNER_SEGMENT_PREFIXES: &[&str] = &[".env.", ".git-", "phpmyadmin"];

/// Substrings of the path or query (lowercased, as received) that are traversal or
/// system-file probes.
const SCANNER_SUBSTRINGS: &[&str] = &[
    "../",
    "..\\",
    "..%2f",
    "..%5c",
    "%2e%2e",
    "%252e%252e",
    "etc/passwd",
    "etc%2fpasswd",
    "win.ini",
];

/// Whether a request for `path` (and `query`) is a scanner's probe. The one list: everything
/// a probe looks like is above.
pub fn is_scanner_probe(path: &str, query: Option<&str>) -> bool {
    let path = path.to_ascii_lowercase();
    let query = query.map(str::to_ascii_lowercase).unwrap_or_default();
    if SCANNER_SUBSTRINGS
        .iter()
        .any(|s| path.contains(s) || query.contains(s))
    {
        return true;
    }
    path.split('/').any(|seg| {
        SCANNER_SEGMENTS.contains(&seg)
            || SCANNER_SEGMENT_PREFIXES.iter().any(|p| seg.starts_with(p))
            || seg.ends_with(".php")
            || seg.ends_with(".asp")
            || seg.ends_with(".aspx")
            || seg.ends_with(".jsp")
    })
}

/// Whether `ip` is in `intrusion_exempt`.
pub fn exempt(core: &Core, ip: &IpAddr) -> bool {
    core.settings
        .limits
        .intrusion_exempt
        .iter()
        .any(|c| c.contains(ip))
}

/// Seconds until the ban of `ip` ends, if it is banned.
pub async fn banned(core: &Core, meta: &RequestMeta, ip: &IpAddr) -> Option<i64> {
    let now = core.clock.now();
    let (until, t) = core.limits.banned_until(now, &ip.to_string()).await;
    if let Some(t) = t {
        super::ratelimit::record_transition(core, meta, t).await;
    }
    until.map(|u: Timestamp| {
        let ms = u
            .as_micros()
            .saturating_sub(now.as_micros())
            .div_euclid(1000);
        ((ms + 999) / 1000).max(1)
    })
}

/// Bans `ip` (unless exempt or already banned): one `intrusion_ban` security event per ban.
/// `what` is the route template (burst) or the probed path (scanner), truncated. Whether this
/// call banned.
pub async fn ban(
    core: &Core,
    meta: &RequestMeta,
    ip: &IpAddr,
    reason: BanReason,
    what: &str,
) -> bool {
    if exempt(core, ip) {
        return false;
    }
    let seconds = core.settings.limits.intrusion_ban_seconds;
    let (banned, t) = core
        .limits
        .ban(core.clock.now(), &ip.to_string(), seconds)
        .await;
    if let Some(t) = t {
        super::ratelimit::record_transition(core, meta, t).await;
    }
    if !banned {
        return false;
    }
    let path: String = what
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    tracing::warn!(
        ip = %ip,
        reason = reason.as_str(),
        path = %path,
        ban_seconds = seconds,
        "client address banned"
    );
    metrics::counter!("kasho_intrusion_bans_total", "reason" => reason.as_str()).increment(1);
    let ev = AuditBuilder::new(core, meta, None)
        .event(
            None,
            "security.intrusion_ban",
            Some(("path", &path)),
            Outcome::Denied,
            Some(&format!("{};ban_seconds={seconds}", reason.as_str())),
        )
        .security(SecurityEvent::IntrusionBan);
    super::security::record(core, ev).await;
    true
}

/// Counts a 401/403/404 answer to `ip`; past `intrusion_error_burst` the address is banned.
pub async fn count_error(core: &Core, meta: &RequestMeta, ip: &IpAddr, route: &str) {
    if exempt(core, ip) {
        return;
    }
    let bucket = Bucket {
        class: Class::Intrusion,
        key: ip.to_string(),
        rate: core.settings.limits.intrusion_error_burst,
    };
    let (decision, t) = core
        .limits
        .take(core.clock.now(), std::slice::from_ref(&bucket))
        .await;
    if let Some(t) = t {
        super::ratelimit::record_transition(core, meta, t).await;
    }
    if decision.refused.is_some() {
        ban(core, meta, ip, BanReason::Burst, route).await;
    }
}

#[cfg(test)]
mod tests {
    use super::is_scanner_probe;

    #[test]
    fn scanner_paths_are_recognised_and_api_paths_are_not() {
        for probe in [
            "/.env",
            "/.env.production",
            "/app/.env",
            "/.git/config",
            "/.GIT/HEAD",
            "/.svn/entries",
            "/.aws/credentials",
            "/wp-admin/",
            "/wp-login.php",
            "/xmlrpc.php",
            "/phpmyadmin/index.php",
            "/phpMyAdmin2/",
            "/server-status",
            "/actuator/health",
            "/cgi-bin/luci",
            "/index.php",
            "/static/..%2f..%2fetc/passwd",
            "/v1/../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/shadow",
        ] {
            assert!(is_scanner_probe(probe, None), "{probe}");
        }
        assert!(is_scanner_probe("/download", Some("file=../../etc/passwd")));
        for api in [
            "/",
            "/healthz",
            "/.well-known/jwks.json",
            "/v1/openapi.json",
            "/docs/",
            "/docs/swagger-ui.css",
            "/v1/accounts/acc_0190f0e4c0a07a3b8b1c2d3e4f5a6b7c",
            "/v1/customers",
            "/v1/auth/password-reset/confirm",
            "/v1/no-such-route",
        ] {
            assert!(
                !is_scanner_probe(api, Some("limit=20&starting_after=acc_1")),
                "{api}"
            );
        }
    }
}
