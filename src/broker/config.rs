//! The `[broker]` section: which store the node shares its rooms through, and how it watches
//! that store.
//!
//! Without `url` the node keeps everything in memory ([`MemoryBroker`](super::MemoryBroker))
//! and needs nothing else. With `url` (feature `redis`) it becomes one node of a cluster whose
//! nodes share rooms, users, presence and history through Redis. The URL may carry a password;
//! it is never printed (see [`BrokerConfig::redacted_url`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{invalid, ConfigError};

/// `[broker]` settings.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://…` (TLS); unset keeps every room in
    /// this process.
    pub url: Option<String>,
    /// Prefix of every Redis key and channel, so that several clusters (or other
    /// applications) can share one Redis. Clusters need different prefixes: the database
    /// number in the URL separates keys, not pub/sub channels.
    pub key_prefix: String,
    /// This node's name: the first part of the session ids it hands out (followed by a random
    /// part per start, so ids stay unique across restarts), and a label in logs. Letters,
    /// digits and `_`. Unset: a random name.
    pub node: Option<String>,
    /// Lifetime of a node's entries in the shared store (presence and the user index) unless
    /// the node refreshes them, which it does every third of it: a node that dies silently has
    /// its users leave after at most this long (plus a third for the sweep). Must be the same on
    /// every node.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// When the node's subscription connection has received nothing for this long, the node
    /// publishes a probe to itself through the store; no answer within one more interval
    /// restarts the connection.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Longest wait for one store command (and for connecting); a call that takes longer fails
    /// with `unavailable`.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Start even when the store cannot be reached (the node reports not ready until it can)
    /// instead of refusing to start.
    pub start_degraded: bool,
    /// PEM file with the CA certificates a `rediss://` store's certificate is verified against,
    /// instead of the system's roots (a private CA).
    pub tls_ca: Option<PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            key_prefix: "heartwire".to_owned(),
            node: None,
            presence_ttl: Duration::from_secs(60),
            probe_interval: Duration::from_secs(5),
            command_timeout: Duration::from_secs(1),
            start_degraded: false,
            tls_ca: None,
        }
    }
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("node", &self.node)
            .field("presence_ttl", &self.presence_ttl)
            .field("probe_interval", &self.probe_interval)
            .field("command_timeout", &self.command_timeout)
            .field("start_degraded", &self.start_degraded)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl BrokerConfig {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> Option<String> {
        self.url.as_deref().map(redact)
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "broker.key_prefix",
                "must be 1 to 64 characters without braces or spaces",
            ));
        }
        if let Some(node) = &self.node {
            if node.is_empty()
                || node.len() > 32
                || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(invalid(
                    "broker.node",
                    "must be 1 to 32 letters, digits or `_`",
                ));
            }
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&self.presence_ttl)
        {
            return Err(invalid(
                "broker.presence_ttl",
                "must be between 100ms and 1 day",
            ));
        }
        if self.probe_interval < Duration::from_millis(10) {
            return Err(invalid("broker.probe_interval", "must be at least 10ms"));
        }
        if self.command_timeout < Duration::from_millis(10) {
            return Err(invalid("broker.command_timeout", "must be at least 10ms"));
        }
        if let Some(url) = &self.url {
            check_url(url)?;
        }
        if self.tls_ca.is_some()
            && !self
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
        {
            return Err(invalid("broker.tls_ca", "needs a rediss:// broker.url"));
        }
        Ok(())
    }
}

#[cfg(feature = "redis")]
fn check_url(url: &str) -> Result<(), ConfigError> {
    use redis::IntoConnectionInfo;
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(invalid(
            "broker.url",
            "must start with redis:// or rediss://",
        ));
    }
    url.into_connection_info().map(|_| ()).map_err(|e| {
        // The crate's message names the part it could not parse, never the password.
        invalid("broker.url", format!("{} is not usable: {e}", redact(url)))
    })
}

#[cfg(not(feature = "redis"))]
fn check_url(_: &str) -> Result<(), ConfigError> {
    Err(invalid(
        "broker.url",
        "heartwire was built without the `redis` feature",
    ))
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or("", |(user, _)| user);
    let shown = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        "***".to_owned()
    };
    format!("{scheme}://{shown}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("rediss://bob:s3cret@h/1"), "rediss://bob:***@h/1");
        assert_eq!(redact("redis://tok@h/1"), "redis://***@h/1");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        let c = BrokerConfig {
            url: Some("redis://:s3cret@h:6379/0".into()),
            ..BrokerConfig::default()
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn names_bad_keys() {
        let bad = |c: BrokerConfig| c.validate().unwrap_err().to_string();
        let base = BrokerConfig::default;
        assert!(bad(BrokerConfig {
            key_prefix: "a{b".into(),
            ..base()
        })
        .contains("broker.key_prefix"));
        assert!(bad(BrokerConfig {
            node: Some("a-b".into()),
            ..base()
        })
        .contains("broker.node"));
        assert!(bad(BrokerConfig {
            presence_ttl: Duration::from_millis(1),
            ..base()
        })
        .contains("broker.presence_ttl"));
        assert!(bad(BrokerConfig {
            url: Some("http://x".into()),
            ..base()
        })
        .contains("broker.url"));
        base().validate().unwrap();
    }
}
