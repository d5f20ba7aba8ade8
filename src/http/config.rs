//! The `[http]` table of the configuration, and its checks.
//!
//! The one check that is a policy rather than a range: an HTTP API without an API key can
//! publish to anyone and disconnect everyone, so it may listen on a loopback address only,
//! unless the operator says explicitly (`allow_insecure`) that something else protects it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{invalid, ConfigError};

/// Settings of the HTTP API. Field names are the keys of the `[http]` TOML table.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP server; none (the default) means no HTTP server. Applications that
    /// mount the API in their own actix-web app ([`HttpApi`](super::HttpApi)) leave it unset.
    pub listen: Option<SocketAddr>,
    /// When set, every `/api/*` request must carry `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// Serve the API without an API key on a non-loopback address.
    pub allow_insecure: bool,
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
            allow_insecure: false,
            workers: 1,
            page_size: 100,
            max_page_size: 1000,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// The key never appears in logs or debug output.
impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("allow_insecure", &self.allow_insecure)
            .field("workers", &self.workers)
            .field("page_size", &self.page_size)
            .field("max_page_size", &self.max_page_size)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl HttpConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("http.api_key", "must not be empty"));
        }
        if let Some(addr) = self.listen {
            if self.api_key.is_none() && !addr.ip().is_loopback() && !self.allow_insecure {
                return Err(invalid(
                    "http.api_key",
                    format!(
                        "refusing to serve the HTTP API on {addr}, a non-loopback address, \
                         without an API key: anyone who reaches it could push to and disconnect \
                         every user. Set one (--api-key, HEARTWIRE_API_KEY or http.api_key), \
                         listen on a loopback address, or pass --http-allow-insecure if \
                         something else protects it"
                    ),
                ));
            }
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
             api_key = \"k\"\npage_size = 10\nshutdown_timeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.presence_events, ["chat:"]);
        assert_eq!(c.http.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.http.api_key.as_deref(), Some("k"));
        assert_eq!((c.http.page_size, c.http.max_page_size), (10, 1000));
        assert_eq!(c.http.shutdown_timeout, Duration::from_secs(2));
        c.validate().unwrap();
        let err = crate::Config::from_toml("[http]\nlisten_on = 1\n").unwrap_err();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn key_is_redacted_and_limits_checked() {
        let c = HttpConfig {
            api_key: Some("s3cret".into()),
            ..HttpConfig::default()
        };
        assert!(!format!("{c:?}").contains("s3cret"));
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
}
