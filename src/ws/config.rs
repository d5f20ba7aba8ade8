//! The `[ws]` table of the configuration, and the origin policy it sets.
//!
//! The origin check is the one browser-specific defence a WebSocket endpoint needs: a page on
//! any site can open a WebSocket to any server from its visitors' browsers (browsers do not
//! apply the same-origin policy to WebSockets), so the server decides from the `Origin`
//! header which pages may. Requests without `Origin` come from non-browser clients, which can
//! claim any origin anyway, and pass.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::http::header;
use actix_web::HttpRequest;
use serde::Deserialize;

use crate::config::{invalid, ConfigError};

/// Settings of the WebSocket listener. Field names are the keys of the `[ws]` TOML table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Address of the WebSocket listener (`/ws`, plus the browser page at `/`); none (the
    /// default) means no WebSocket listener. Port 0 picks a free port.
    pub listen: Option<SocketAddr>,
    /// Origins whose pages may connect: exact origins (`https://chat.example.com`) or `*` for
    /// any. Empty (the default): only pages served from the host the request is addressed to
    /// (its `Host` header), such as the page at `/`. Clients that send no `Origin` (anything
    /// but a browser) are always let in.
    pub allowed_origins: Vec<String>,
    /// How long the server keeps reading (and discarding) from a connection after its close
    /// frame before closing the socket, so that a peer still sending does not get a TCP reset
    /// that could destroy the close frame in flight. Zero closes at once.
    #[serde(with = "humantime_serde")]
    pub close_linger: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            listen: None,
            allowed_origins: Vec::new(),
            close_linger: Duration::from_secs(1),
        }
    }
}

impl WsConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(invalid(
                    "ws.allowed_origins",
                    format!(
                        "`{origin}` is not an origin: use scheme://host[:port] with no path \
                         (as browsers send it, e.g. https://chat.example.com), or *"
                    ),
                ));
            }
        }
        if self.close_linger > Duration::from_secs(60) {
            return Err(invalid("ws.close_linger", "must be at most 60s"));
        }
        Ok(())
    }
}

/// `scheme://authority` and nothing more.
fn is_origin(text: &str) -> bool {
    let Some((scheme, authority)) = text.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', ' '])
}

/// Which pages may open a WebSocket, from `ws.allowed_origins`.
#[derive(Debug, Clone)]
pub(crate) enum OriginPolicy {
    /// Pages served from the host the request names in `Host`.
    SameHost,
    /// Any page.
    Any,
    /// Pages of exactly these origins.
    Listed(Vec<String>),
}

impl OriginPolicy {
    /// The policy `allowed_origins` describes.
    pub(crate) fn new(allowed_origins: &[String]) -> Self {
        if allowed_origins.is_empty() {
            OriginPolicy::SameHost
        } else if allowed_origins.iter().any(|o| o == "*") {
            OriginPolicy::Any
        } else {
            OriginPolicy::Listed(allowed_origins.to_vec())
        }
    }

    /// Whether `req` may be upgraded. No `Origin` header: not a browser, allowed.
    pub(crate) fn allows(&self, req: &HttpRequest) -> bool {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::Listed(allowed) => allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)),
            OriginPolicy::SameHost => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok());
                match (origin.split_once("://"), host) {
                    (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
                    _ => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn request(origin: Option<&str>, host: &str) -> HttpRequest {
        let mut req = TestRequest::default().insert_header((header::HOST, host));
        if let Some(origin) = origin {
            req = req.insert_header((header::ORIGIN, origin));
        }
        req.to_http_request()
    }

    #[test]
    fn same_host_by_default_and_no_origin_always() {
        let policy = OriginPolicy::new(&[]);
        assert!(policy.allows(&request(None, "chat.example:8080")));
        assert!(policy.allows(&request(
            Some("http://chat.example:8080"),
            "chat.example:8080"
        )));
        assert!(policy.allows(&request(
            Some("https://CHAT.example:8080"),
            "chat.example:8080"
        )));
        assert!(!policy.allows(&request(Some("http://evil.example"), "chat.example:8080")));
        assert!(!policy.allows(&request(Some("http://chat.example:9"), "chat.example:8080")));
        assert!(!policy.allows(&request(Some("null"), "chat.example:8080")));
    }

    #[test]
    fn listed_origins_are_exact_and_star_is_any() {
        let policy = OriginPolicy::new(&["https://app.example".to_owned()]);
        assert!(policy.allows(&request(Some("https://app.example"), "ws.example")));
        assert!(!policy.allows(&request(Some("http://app.example"), "ws.example")));
        assert!(!policy.allows(&request(Some("https://app.example.evil"), "ws.example")));
        // the page's own host is not implied once a list is given
        assert!(!policy.allows(&request(Some("http://ws.example"), "ws.example")));
        let any = OriginPolicy::new(&["*".to_owned()]);
        assert!(any.allows(&request(Some("http://anything.example"), "ws.example")));
    }

    #[test]
    fn config_names_a_malformed_origin() {
        for bad in [
            "chat.example",
            "https://chat.example/",
            "https://",
            "https://a/b",
        ] {
            let c = WsConfig {
                allowed_origins: vec![bad.to_owned()],
                ..WsConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("ws.allowed_origins"), "{bad}: {err}");
        }
        WsConfig {
            allowed_origins: vec!["*".into(), "http://localhost:8080".into()],
            ..WsConfig::default()
        }
        .validate()
        .unwrap();
        let c = crate::Config::from_toml(
            "[ws]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
        assert_eq!(c.ws.listen, Some("127.0.0.1:0".parse().unwrap()));
        c.validate().unwrap();
    }
}
