//! The `[hooks]` table: how long a session waits for a hook, what it does when the hook fails,
//! and where the HTTP hooks of `heartwire serve` go.
//!
//! The URL keys exist in every build, like `tls.cert` and `auth.jwt_secret`: a URL configured
//! in a build without the `hooks-http` feature refuses to start instead of running with no
//! hook, which would let through everything the hook was meant to check.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::HookKind;
use crate::config::{invalid, ConfigError};

/// What a session does when a hook does not answer within `hooks.timeout` or fails.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Refuse: a connect gets `error{code:"unauthorized"}` then `bye{reason:"unauthorized",
    /// reconnect_ms}`; a subscribe, publish or send gets `error{code:"internal"}` with its `id`.
    #[default]
    Deny,
    /// Let the frame through as if the hook had accepted it unchanged.
    Allow,
}

impl FailurePolicy {
    /// Parses `deny` or `allow` (the command-line form).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "deny" => Ok(FailurePolicy::Deny),
            "allow" => Ok(FailurePolicy::Allow),
            other => Err(format!("`{other}`: expected deny or allow")),
        }
    }
}

/// Settings of the application hooks. Field names are the keys of the `[hooks]` TOML table.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Longest time a session waits for one hook's answer, including the wait for a free HTTP
    /// request slot.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The answer when a hook times out or fails.
    pub on_failure: FailurePolicy,
    /// Base URL of the HTTP hooks: every hook is on, at `{url}/connect`, `{url}/subscribe`,
    /// `{url}/publish` and `{url}/send` (feature `hooks-http`).
    pub url: Option<String>,
    /// URL of the connect hook (overrides `url` for it; turns it on alone when `url` is unset).
    pub connect_url: Option<String>,
    /// URL of the subscribe hook.
    pub subscribe_url: Option<String>,
    /// URL of the publish hook.
    pub publish_url: Option<String>,
    /// URL of the send hook.
    pub send_url: Option<String>,
    /// Sent as `X-Heartwire-Secret` with every HTTP hook request, so that the backend can
    /// tell heartwire from anyone else.
    pub secret: Option<String>,
    /// HTTP hook requests in flight at once, over all sessions; the rest wait their turn
    /// (within `timeout`).
    pub max_in_flight: usize,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            timeout: Duration::from_secs(1),
            on_failure: FailurePolicy::Deny,
            url: None,
            connect_url: None,
            subscribe_url: None,
            publish_url: None,
            send_url: None,
            secret: None,
            max_in_flight: 64,
        }
    }
}

/// The secret never appears in logs or debug output.
impl fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksConfig")
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("url", &self.url)
            .field("connect_url", &self.connect_url)
            .field("subscribe_url", &self.subscribe_url)
            .field("publish_url", &self.publish_url)
            .field("send_url", &self.send_url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl HooksConfig {
    /// Whether any HTTP hook is configured.
    pub(crate) fn has_urls(&self) -> bool {
        self.urls().any(|(_, url)| url.is_some())
    }

    fn urls(&self) -> impl Iterator<Item = (&'static str, Option<&String>)> {
        [
            ("hooks.url", self.url.as_ref()),
            ("hooks.connect_url", self.connect_url.as_ref()),
            ("hooks.subscribe_url", self.subscribe_url.as_ref()),
            ("hooks.publish_url", self.publish_url.as_ref()),
            ("hooks.send_url", self.send_url.as_ref()),
        ]
        .into_iter()
    }

    /// The `kind` hook's own URL setting.
    fn own_url(&self, kind: HookKind) -> &Option<String> {
        match kind {
            HookKind::Connect => &self.connect_url,
            HookKind::Subscribe => &self.subscribe_url,
            HookKind::Publish => &self.publish_url,
            HookKind::Send => &self.send_url,
        }
    }

    /// The key [`url_for`](Self::url_for) takes `kind`'s URL from, to name it in errors.
    #[cfg(any(feature = "hooks-http", test))]
    pub(crate) fn url_key(&self, kind: HookKind) -> &'static str {
        match (kind, self.own_url(kind).is_some()) {
            (_, false) => "hooks.url",
            (HookKind::Connect, true) => "hooks.connect_url",
            (HookKind::Subscribe, true) => "hooks.subscribe_url",
            (HookKind::Publish, true) => "hooks.publish_url",
            (HookKind::Send, true) => "hooks.send_url",
        }
    }

    /// The URL the `kind` hook posts to, if it is on: its own URL, else `url` + `/kind`.
    pub fn url_for(&self, kind: HookKind) -> Option<String> {
        self.own_url(kind).clone().or_else(|| {
            let base = self.url.as_deref()?;
            Some(format!("{}/{kind}", base.trim_end_matches('/')))
        })
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout < Duration::from_millis(1) || self.timeout > Duration::from_secs(60) {
            return Err(invalid("hooks.timeout", "must be between 1ms and 60s"));
        }
        if !(1..=65_536).contains(&self.max_in_flight) {
            return Err(invalid(
                "hooks.max_in_flight",
                "must be between 1 and 65536",
            ));
        }
        for (key, url) in self.urls() {
            if let Some(url) = url {
                check_url(url).map_err(|reason| invalid(key, reason))?;
            }
        }
        if let Some(secret) = &self.secret {
            if secret.is_empty() || !secret.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(invalid(
                    "hooks.secret",
                    "must be non-empty printable ASCII (it travels in an HTTP header)",
                ));
            }
        }
        Ok(())
    }
}

/// A hook URL: `http://host[:port][/path]`. HTTPS is refused rather than silently sent in
/// clear text: the HTTP hook client has no TLS yet, so the backend belongs on loopback or a
/// private network (or behind a local TLS-terminating proxy).
fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(
            "https:// is not supported by the HTTP hook client; use http:// to a \
                    backend on loopback or a private network"
                .into(),
        );
    }
    let Some(rest) = lower.strip_prefix("http://") else {
        return Err(format!("`{url}` is not an http:// URL"));
    };
    if rest.is_empty() || rest.starts_with('/') || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("`{url}` is not an http:// URL with a host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_derive_from_the_base_unless_set() {
        let c = HooksConfig {
            url: Some("http://127.0.0.1:8080/hooks/".into()),
            publish_url: Some("http://127.0.0.1:9090/moderate".into()),
            ..HooksConfig::default()
        };
        assert_eq!(
            c.url_for(HookKind::Connect).as_deref(),
            Some("http://127.0.0.1:8080/hooks/connect")
        );
        assert_eq!(
            c.url_for(HookKind::Publish).as_deref(),
            Some("http://127.0.0.1:9090/moderate")
        );
        let only = HooksConfig {
            send_url: Some("http://b/send".into()),
            ..HooksConfig::default()
        };
        assert_eq!(only.url_for(HookKind::Connect), None);
        assert_eq!(c.url_key(HookKind::Connect), "hooks.url");
        assert_eq!(c.url_key(HookKind::Publish), "hooks.publish_url");
        assert!(only.has_urls());
        assert!(!HooksConfig::default().has_urls());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (config, key) in [
            (
                HooksConfig {
                    url: Some("https://backend/hooks".into()),
                    ..HooksConfig::default()
                },
                "hooks.url",
            ),
            (
                HooksConfig {
                    connect_url: Some("ftp://x".into()),
                    ..HooksConfig::default()
                },
                "hooks.connect_url",
            ),
            (
                HooksConfig {
                    send_url: Some("http:// spaced".into()),
                    ..HooksConfig::default()
                },
                "hooks.send_url",
            ),
            (
                HooksConfig {
                    timeout: Duration::ZERO,
                    ..HooksConfig::default()
                },
                "hooks.timeout",
            ),
            (
                HooksConfig {
                    max_in_flight: 0,
                    ..HooksConfig::default()
                },
                "hooks.max_in_flight",
            ),
            (
                HooksConfig {
                    secret: Some("line\nbreak".into()),
                    ..HooksConfig::default()
                },
                "hooks.secret",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        HooksConfig::default().validate().unwrap();
    }

    #[test]
    fn secret_is_redacted() {
        let c = HooksConfig {
            secret: Some("hunter2-hunter2".into()),
            ..HooksConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
