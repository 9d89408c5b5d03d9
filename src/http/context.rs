//! The request's context, shared by every layer of `http/` without importing any of them: its
//! id (a task-local set by `middleware::request_id`), the facts the audit trail records about
//! it (`RequestMeta`: id, client address behind trusted proxies, user agent), and the marker of
//! a response whose audit record the use case wrote. The signed-in `Principal` travels as a
//! request extension set by `middleware::authorize` and is read by the extractor in
//! `extract.rs`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, header};

use crate::domain::security::Cidr;
use crate::service::RequestMeta;

tokio::task_local! {
    pub(super) static REQUEST_ID: String;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Marks a response whose audit record was written by the use case itself.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecorded;

/// The request facts the audit trail records. The client address is the peer's, unless the
/// peer is a configured trusted proxy: then it is the right-most `X-Forwarded-For` address that
/// is not itself a trusted proxy. Audit, throttling, rate limits and allow-lists all see this
/// one address.
pub(crate) fn request_meta(req: &Request, trusted_proxies: &[Cidr]) -> RequestMeta {
    RequestMeta {
        request_id: current_request_id(),
        ip: client_ip(req, trusted_proxies).map(|ip| ip.to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
    }
}

/// The client address of a request (see [`request_meta`]).
pub(crate) fn client_ip(req: &Request, trusted_proxies: &[Cidr]) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
        .or_else(|| {
            req.extensions()
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|m| m.0)
        })
        .map(|addr| client_address(addr.ip(), req.headers(), trusted_proxies))
}

/// The client behind `peer`: `X-Forwarded-For` is read only when the peer is a trusted proxy,
/// from the right (the entries the proxies appended), skipping trusted proxies; an unparsable
/// entry stops the walk (everything left of it is the client's own claim).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[Cidr]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|c| c.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                HeaderValue::from_str(v).unwrap_or_else(|e| unreachable!("{e}")),
            );
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_read_from_the_right() {
        let proxies: Vec<Cidr> = vec![
            "10.0.0.0/8".parse().unwrap_or_else(|e| unreachable!("{e}")),
            "2001:db8::/32"
                .parse()
                .unwrap_or_else(|e| unreachable!("{e}")),
        ];
        let h = xff(&["198.51.100.1, 203.0.113.5, 10.1.1.1"]);
        // An untrusted peer: the header is ignored.
        assert_eq!(
            client_address(addr("192.0.2.9"), &h, &proxies),
            addr("192.0.2.9")
        );
        // A trusted peer: the right-most address that is not a proxy; what the client wrote on
        // the left (198.51.100.1) is never believed.
        assert_eq!(
            client_address(addr("10.0.0.2"), &h, &proxies),
            addr("203.0.113.5")
        );
        // Several header lines are one list, in order.
        let h = xff(&["198.51.100.1", "203.0.113.5, 10.1.1.1"]);
        assert_eq!(
            client_address(addr("2001:db8::1"), &h, &proxies),
            addr("203.0.113.5")
        );
        // No header, or only proxies: the left-most proxy reached.
        assert_eq!(
            client_address(addr("10.0.0.2"), &HeaderMap::new(), &proxies),
            addr("10.0.0.2")
        );
        assert_eq!(
            client_address(addr("10.0.0.2"), &xff(&["10.3.3.3"]), &proxies),
            addr("10.3.3.3")
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            client_address(
                addr("10.0.0.2"),
                &xff(&["203.0.113.5, junk, 10.1.1.1"]),
                &proxies
            ),
            addr("10.1.1.1")
        );
        // No proxies configured: always the peer.
        assert_eq!(client_address(addr("10.0.0.2"), &h, &[]), addr("10.0.0.2"));
    }
}
