//! The `[http]` table of the configuration, and its checks.
//!
//! One check is a policy rather than a range: an HTTP API without an API key can publish to
//! anyone and disconnect everyone, so it may listen on a loopback address only, unless the
//! operator says explicitly (`allow_insecure`) that something else protects it. The other
//! checks catch values that would silently protect nothing: an empty key, a host pattern or a
//! CORS origin that no request can ever match.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::cors::parse_origin;
use super::host::HostPattern;
use crate::config::{invalid, ConfigError};

/// Settings of the HTTP API. Field names are the keys of the `[http]` TOML table.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP server; none (the default) means no HTTP server. Applications that
    /// mount the API in their own actix-web app ([`HttpApi`](super::HttpApi)) leave it unset.
    pub listen: Option<SocketAddr>,
    /// A key that `/api/*` requests may carry as `Authorization: Bearer <key>`; accepted
    /// alongside the keys of `api_keys`.
    pub api_key: Option<String>,
    /// Keys accepted at once, for rotation: add the new key, move the clients, drop the old
    /// one. With any key configured, every `/api/*` request must carry one of them.
    pub api_keys: Vec<String>,
    /// Serve the API without an API key on a non-loopback address.
    pub allow_insecure: bool,
    /// `Host` values answered besides the loopback names and addresses (`localhost`,
    /// `127.0.0.0/8`, `[::1]`): names or addresses, with a port to match that port only.
    /// Without a key, `/api/*` refuses any other `Host` (a defence against DNS rebinding);
    /// with a key, `Host` is restricted only when this list is not empty.
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://admin.example.com`) allowed to call `/api/*` from a browser.
    /// Empty (the default): no CORS headers at all and no preflight answered.
    pub cors_origins: Vec<String>,
    /// Serve the HTTP API over TLS with the server's `tls.cert` and `tls.key`.
    pub tls: bool,
    /// Worker threads of the HTTP server.
    pub workers: usize,
    /// Entries per page of `/api/connections` and `/api/rooms` when `limit` is not given.
    pub page_size: usize,
    /// Largest `limit` honoured; larger ones are reduced to it.
    pub max_page_size: usize,
    /// Longest time the HTTP server waits for requests in flight when the server stops.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            api_key: None,
            api_keys: Vec::new(),
            allow_insecure: false,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            tls: false,
            workers: 1,
            page_size: 100,
            max_page_size: 1000,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// The keys never appear in logs or debug output, only how many there are.
impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "api_keys",
                &format_args!("<{} redacted>", self.api_keys.len()),
            )
            .field("allow_insecure", &self.allow_insecure)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("cors_origins", &self.cors_origins)
            .field("tls", &self.tls)
            .field("workers", &self.workers)
            .field("page_size", &self.page_size)
            .field("max_page_size", &self.max_page_size)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl HttpConfig {
    /// Every configured key: `api_key` first, then `api_keys`.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.api_key
            .iter()
            .chain(self.api_keys.iter())
            .map(String::as_str)
    }

    /// Checks every value; the error names the first bad key (and never shows an API key).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.api_key {
            check_key(key).map_err(|reason| invalid("http.api_key", reason))?;
        }
        for (n, key) in self.api_keys.iter().enumerate() {
            check_key(key).map_err(|reason| {
                invalid(
                    "http.api_keys",
                    format!("key {} of {}: {reason}", n + 1, self.api_keys.len()),
                )
            })?;
        }
        if let Some(addr) = self.listen {
            let keyless = self.keys().next().is_none();
            if keyless && !addr.ip().is_loopback() && !self.allow_insecure {
                return Err(invalid(
                    "http.api_key",
                    format!(
                        "refusing to serve the HTTP API on {addr}, a non-loopback address, \
                         without an API key: anyone who reaches it could push to and disconnect \
                         every user. Set one (HEARTWIRE_API_KEY, --api-key-file, http.api_key \
                         or http.api_keys), listen on a loopback address, or pass \
                         --http-allow-insecure if something else protects it"
                    ),
                ));
            }
        }
        for host in &self.allowed_hosts {
            HostPattern::parse(host)
                .map_err(|reason| invalid("http.allowed_hosts", format!("`{host}`: {reason}")))?;
        }
        for origin in &self.cors_origins {
            parse_origin(origin)
                .map_err(|reason| invalid("http.cors_origins", format!("`{origin}`: {reason}")))?;
        }
        if self.tls && cfg!(not(feature = "tls")) {
            return Err(invalid(
                "http.tls",
                "heartwire was built without the `tls` feature",
            ));
        }
        if !(1..=64).contains(&self.workers) {
            return Err(invalid("http.workers", "must be between 1 and 64"));
        }
        if !(1..=100_000).contains(&self.max_page_size) {
            return Err(invalid(
                "http.max_page_size",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=self.max_page_size).contains(&self.page_size) {
            return Err(invalid(
                "http.page_size",
                format!(
                    "must be between 1 and max_page_size ({})",
                    self.max_page_size
                ),
            ));
        }
        Ok(())
    }
}

/// Why `key` cannot work as an API key, without quoting it. A key travels in an
/// `Authorization` header, so it is printable ASCII without spaces.
pub(crate) fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("must not be empty");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces (it travels in an HTTP header)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_public_address_without_key_unless_insisted() {
        let public = HttpConfig {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            ..HttpConfig::default()
        };
        let err = public.validate().unwrap_err().to_string();
        assert!(
            err.contains("http.api_key") && err.contains("--http-allow-insecure"),
            "{err}"
        );
        HttpConfig {
            allow_insecure: true,
            ..public.clone()
        }
        .validate()
        .unwrap();
        HttpConfig {
            api_key: Some("k".into()),
            ..public.clone()
        }
        .validate()
        .unwrap();
        HttpConfig {
            api_keys: vec!["k".into()],
            ..public.clone()
        }
        .validate()
        .unwrap();
        HttpConfig {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            ..HttpConfig::default()
        }
        .validate()
        .unwrap();
        HttpConfig {
            listen: Some("[::1]:8080".parse().unwrap()),
            ..HttpConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn read_from_the_http_table() {
        let c = crate::Config::from_toml(
            "presence_events = [\"chat:\"]\n[http]\nlisten = \"127.0.0.1:0\"\n\
             api_key = \"k\"\napi_keys = [\"k2\", \"k3\"]\npage_size = 10\n\
             shutdown_timeout = \"2s\"\nallowed_hosts = [\"push.internal\"]\n\
             cors_origins = [\"https://admin.example\"]\n",
        )
        .unwrap();
        assert_eq!(c.presence_events, ["chat:"]);
        assert_eq!(c.http.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.http.keys().collect::<Vec<_>>(), ["k", "k2", "k3"]);
        assert_eq!((c.http.page_size, c.http.max_page_size), (10, 1000));
        assert_eq!(c.http.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(c.http.allowed_hosts, ["push.internal"]);
        assert_eq!(c.http.cors_origins, ["https://admin.example"]);
        assert!(!c.http.tls);
        c.validate().unwrap();
        let err = crate::Config::from_toml("[http]\nlisten_on = 1\n").unwrap_err();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn keys_are_redacted_and_checked_without_being_quoted() {
        let c = HttpConfig {
            api_key: Some("s3cret".into()),
            api_keys: vec!["0ther-s3cret".into(), "th1rd".into()],
            ..HttpConfig::default()
        };
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("th1rd"),
            "{debug}"
        );
        assert!(debug.contains("<2 redacted>"), "{debug}");
        let bad = HttpConfig {
            api_keys: vec!["good".into(), "bad key".into()],
            ..HttpConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("http.api_keys") && err.contains("key 2 of 2"),
            "{err}"
        );
        assert!(!err.contains("bad key"), "the key is quoted: {err}");
        let empty = HttpConfig {
            api_key: Some(String::new()),
            ..HttpConfig::default()
        };
        assert!(empty
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http.api_key"));
        let bad = HttpConfig {
            page_size: 2000,
            ..HttpConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http.page_size"));
    }

    #[test]
    fn hosts_and_origins_are_checked() {
        for host in [
            "",
            "http://a.example",
            "a.example/x",
            "a b",
            "a.example:99999",
        ] {
            let c = HttpConfig {
                allowed_hosts: vec![host.into()],
                ..HttpConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("http.allowed_hosts"), "{host:?}: {err}");
        }
        for origin in [
            "*",
            "null",
            "admin.example",
            "https://admin.example/",
            "https://admin.example/app",
            "ftp://admin.example",
            "https://admin.example:443",
        ] {
            let c = HttpConfig {
                cors_origins: vec![origin.into()],
                ..HttpConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("http.cors_origins"), "{origin:?}: {err}");
        }
        HttpConfig {
            allowed_hosts: vec![
                "push.internal".into(),
                "10.0.0.5:7780".into(),
                "[fd00::1]".into(),
                "fd00::2".into(),
            ],
            cors_origins: vec![
                "https://admin.example".into(),
                "http://localhost:3000".into(),
            ],
            ..HttpConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn tls_needs_the_feature() {
        let c = HttpConfig {
            tls: true,
            ..HttpConfig::default()
        };
        assert_eq!(c.validate().is_ok(), cfg!(feature = "tls"));
    }
}
