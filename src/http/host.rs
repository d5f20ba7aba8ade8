//! The `Host` check of `/api/*`, a defence against DNS rebinding.
//!
//! A page on `http://evil.example` can make its name resolve to `127.0.0.1`; the browser then
//! treats the loopback API as the page's own origin and lets its scripts send and read
//! anything. What the browser cannot forge is the `Host` header: it stays `evil.example`. So
//! an API without a key answers only requests that name it by a loopback name or address, or
//! by a name the operator listed (`http.allowed_hosts`). With a key the page has nothing to
//! send, and `Host` is checked only when the operator lists names.
//!
//! Only the `Host` header (or, in its absence, the request target's authority) counts;
//! `Forwarded` and `X-Forwarded-Host` are ordinary headers that a same-origin script may set.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use super::error::ApiError;

/// A host as it appears in a `Host` header or in `http.allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    /// Lower case, without a trailing dot.
    Name(String),
}

impl Host {
    fn is_loopback(&self) -> bool {
        match self {
            Host::Ip(IpAddr::V4(ip)) => ip.is_loopback(),
            Host::Ip(IpAddr::V6(ip)) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Host::Name(name) => name == "localhost",
        }
    }
}

/// One entry of `http.allowed_hosts`: a host, and a port when the entry names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPattern {
    host: Host,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses `name`, `name:port`, `1.2.3.4[:port]`, `[v6][:port]` or a bare IPv6 address.
    pub(crate) fn parse(text: &str) -> Result<HostPattern, &'static str> {
        if let Ok(ip) = text.parse::<Ipv6Addr>() {
            return Ok(HostPattern {
                host: Host::Ip(IpAddr::V6(ip)),
                port: None,
            });
        }
        parse_authority(text).ok_or(
            "expected a host name or address, optionally with `:port` \
             (no scheme, path or wildcard)",
        )
    }

    fn matches(&self, host: &Host, port: Option<u16>) -> bool {
        self.host == *host && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// Parses the authority of a `Host` header: `host[:port]` with a bracketed IPv6 address.
fn parse_authority(text: &str) -> Option<HostPattern> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        (Host::Ip(IpAddr::V6(ip)), after)
    } else {
        let (name, after) = match text.find(':') {
            Some(colon) => text.split_at(colon),
            None => (text, ""),
        };
        (parse_name(name)?, after)
    };
    let port = match port {
        "" => None,
        port => Some(port.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    Some(HostPattern { host, port })
}

/// An IPv4 address or a DNS name (letters, digits, `-`, `_`, dots).
fn parse_name(name: &str) -> Option<Host> {
    if let Ok(ip) = name.parse() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then(|| Host::Name(name.to_ascii_lowercase()))
}

/// Which `Host` values `/api/*` answers.
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    /// Off when a key protects the API and no names are listed.
    enforced: bool,
    allowed: Arc<[HostPattern]>,
}

impl HostPolicy {
    /// The policy for `allowed_hosts`; `keyed` says whether an API key protects the API.
    /// Entries that do not parse allow nothing (the configuration check reports them).
    pub(crate) fn new(allowed_hosts: &[String], keyed: bool) -> HostPolicy {
        let allowed: Arc<[HostPattern]> = allowed_hosts
            .iter()
            .filter_map(|entry| match HostPattern::parse(entry) {
                Ok(pattern) => Some(pattern),
                Err(reason) => {
                    tracing::error!(%entry, "ignoring http.allowed_hosts entry: {reason}");
                    None
                }
            })
            .collect();
        HostPolicy {
            enforced: !keyed || !allowed_hosts.is_empty(),
            allowed,
        }
    }

    /// Whether a request naming `authority` is answered.
    fn allows(&self, authority: &str) -> bool {
        let Some(HostPattern { host, port }) = parse_authority(authority) else {
            return false;
        };
        host.is_loopback() || self.allowed.iter().any(|p| p.matches(&host, port))
    }
}

/// Refuses, with 421, a request whose `Host` (and request-target authority, when it has one)
/// the policy does not allow.
pub(crate) async fn check(
    policy: HostPolicy,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if policy.enforced {
        let mut named = req.headers().get_all(header::HOST).peekable();
        let header_ok =
            named.peek().is_some() && named.all(|v| v.to_str().is_ok_and(|h| policy.allows(h)));
        let target_ok = req
            .uri()
            .authority()
            .is_none_or(|a| policy.allows(a.as_str()));
        if !(header_ok && target_ok) {
            let host = req
                .headers()
                .get(header::HOST)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            tracing::info!(%host, peer = ?req.peer_addr(), path = %req.path(), "HTTP API request refused: Host not allowed");
            let response = ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                format!(
                    "this API answers only requests for a loopback name or address \
                     (localhost, 127.0.0.1, [::1]) or a name in http.allowed_hosts, \
                     not for Host `{host}`"
                ),
            )
            .error_response();
            return Ok(req.into_response(response));
        }
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], keyed: bool) -> HostPolicy {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        HostPolicy::new(&allowed, keyed)
    }

    #[test]
    fn loopback_names_and_addresses_pass() {
        let p = policy(&[], false);
        for host in [
            "localhost",
            "LOCALHOST:7780",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.1.2.3:7780",
            "[::1]",
            "[::1]:7780",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(p.allows(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:7780",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1",
            "[::2]:7780",
            "127.1",
            "localhost:x",
            "user@localhost",
            "localhost:7780/x",
            "[::1",
        ] {
            assert!(!p.allows(host), "{host}");
        }
    }

    #[test]
    fn listed_hosts_pass_with_their_port() {
        let p = policy(&["push.internal", "10.0.0.5:7780", "fd00::1"], false);
        assert!(p.allows("Push.Internal"));
        assert!(p.allows("push.internal:1234"));
        assert!(p.allows("10.0.0.5:7780"));
        assert!(!p.allows("10.0.0.5:7781"));
        assert!(!p.allows("10.0.0.5"));
        assert!(p.allows("[fd00::1]:9"));
        assert!(p.allows("localhost"), "loopback stays allowed");
        assert!(!p.allows("other.internal"));
    }

    #[test]
    fn a_key_lifts_the_check_unless_hosts_are_listed() {
        assert!(!policy(&[], true).enforced);
        assert!(policy(&["a.example"], true).enforced);
        assert!(policy(&[], false).enforced);
    }

    #[test]
    fn patterns_refuse_what_no_host_header_can_match() {
        for entry in [
            "",
            "http://a",
            "a/b",
            "*.a.example",
            "a b",
            ":80",
            "a:",
            "[::1]x",
        ] {
            assert!(HostPattern::parse(entry).is_err(), "{entry:?}");
        }
    }
}
