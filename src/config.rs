//! Server configuration: every limit and timer in one validated struct.
//!
//! A [`Config`] is built from defaults, then a TOML file, then `HEARTWIRE_*` environment
//! variables and command-line flags (the binary does the layering). [`Config::validate`] runs
//! before anything starts so that a bad value is reported by key instead of surfacing later as
//! odd behaviour.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::broker::BrokerConfig;
use crate::hooks::HooksConfig;
use crate::limits::LimitsConfig;
use crate::tls::TlsConfig;

/// Default shortest interval a client may ask for.
const DEFAULT_HEARTBEAT_MIN: Duration = Duration::from_secs(5);
/// Default longest interval a client may ask for.
const DEFAULT_HEARTBEAT_MAX: Duration = Duration::from_secs(300);
/// No interval above a day: the dead-peer bound is a multiple of it and must not overflow.
const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);
/// The longest any configured duration may be.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything a heartwire server can be told. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the TCP listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Time between two server pings.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Shortest interval a client may ask for with `hello.heartbeat.interval_ms`; unset: 5 s,
    /// or `heartbeat_interval` when that is shorter.
    #[serde(with = "humantime_serde")]
    pub heartbeat_min: Option<Duration>,
    /// Longest interval a client may ask for (mobile clients save battery with long ones);
    /// unset: 5 min, or `heartbeat_interval` when that is longer.
    #[serde(with = "humantime_serde")]
    pub heartbeat_max: Option<Duration>,
    /// Consecutive missed pings after which a silent client is closed.
    pub max_missed: u32,
    /// Time a new connection has to send `hello`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest accepted line in bytes, announced in `welcome`.
    pub max_frame: usize,
    /// Invalid lines tolerated before the connection is closed with `protocol_error`.
    pub max_bad_frames: u32,
    /// Worker arbiters (threads) that sessions are spread over; 0 means one per core.
    pub workers: usize,
    /// Outbound bytes a session may have queued before it is closed as a slow consumer.
    pub outbound_budget: usize,
    /// Longest time the server keeps writing queued frames to a closing connection.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Messages kept per room for `since` recovery and publish-id dedupe.
    pub history_size: usize,
    /// Age after which a message leaves a room's history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Interval of the registry sweep that removes dead sessions and empty rooms.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Registry crashes tolerated within `registry_restart_window`; one more stops the server
    /// with an error instead of restarting in a loop.
    pub max_registry_restarts: u32,
    /// The window of `max_registry_restarts`.
    #[serde(with = "humantime_serde")]
    pub registry_restart_window: Duration,
    /// Longest graceful shutdown before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Base of the `reconnect_ms` hint sent with `bye{reason:"shutdown"}`; each session gets a
    /// random value between this and twice this, so clients do not return all at once.
    #[serde(with = "humantime_serde")]
    pub shutdown_reconnect: Duration,
    /// Listen backlog.
    pub backlog: u32,
    /// Sets `SO_REUSEPORT` on the listener, so that several heartwire processes (nodes of one
    /// cluster, see `[broker]`) can listen on the same port and the kernel spreads new
    /// connections over them.
    pub reuse_port: bool,
    /// TCP keep-alive and `TCP_USER_TIMEOUT` settings; derived from the heartbeat when unset.
    pub tcp: TcpConfig,
    /// Name reported in `welcome.server`.
    pub server_name: String,
    /// Token authentication; off unless a key is set.
    pub auth: AuthConfig,
    /// TLS on the listener; off unless a certificate and key are set.
    pub tls: TlsConfig,
    /// Connection, rate and size limits.
    pub limits: LimitsConfig,
    /// Application hooks: their timeout, their failure answer, and HTTP hook URLs.
    pub hooks: HooksConfig,
    /// The store shared with other nodes (in memory, for one node, unless `broker.url` is
    /// set).
    pub broker: BrokerConfig,
    /// The HTTP API (off unless `http.listen` is set).
    #[cfg(feature = "http")]
    pub http: crate::http::HttpConfig,
    /// The WebSocket listener (off unless `ws.listen` is set).
    #[cfg(feature = "ws")]
    pub ws: crate::ws::WsConfig,
    /// Rooms whose subscribers get `join`/`leave` events: those whose name starts with one of
    /// these prefixes (`"*"` or `""` matches every room). Empty: no events.
    pub presence_events: Vec<String>,
}

/// Kernel-level liveness settings applied to every accepted socket.
///
/// Unset values are derived from the heartbeat so that the kernel
/// gives up on a dead peer no later than the application heartbeat would.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Idle time before the first keep-alive probe.
    #[serde(with = "humantime_serde")]
    pub keepalive_idle: Option<Duration>,
    /// Time between keep-alive probes.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
    /// Unanswered probes before the kernel drops the connection.
    pub keepalive_retries: Option<u32>,
    /// Longest time written data may stay unacknowledged (`TCP_USER_TIMEOUT`).
    #[serde(with = "humantime_serde")]
    pub user_timeout: Option<Duration>,
}

/// Keep-alive values resolved from [`TcpConfig`] and the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keepalive {
    /// Idle time before the first probe.
    pub(crate) idle: Duration,
    /// Time between probes.
    pub(crate) interval: Duration,
    /// Probes before giving up.
    pub(crate) retries: u32,
    /// `TCP_USER_TIMEOUT`.
    pub(crate) user_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_min: None,
            heartbeat_max: None,
            max_missed: 2,
            handshake_timeout: Duration::from_secs(10),
            max_frame: 65536,
            max_bad_frames: 10,
            workers: 0,
            outbound_budget: 1024 * 1024,
            close_timeout: Duration::from_secs(5),
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(30),
            max_registry_restarts: 5,
            registry_restart_window: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            shutdown_reconnect: Duration::from_secs(1),
            backlog: 4096,
            reuse_port: false,
            tcp: TcpConfig::default(),
            server_name: concat!("heartwire/", env!("CARGO_PKG_VERSION")).to_owned(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            hooks: HooksConfig::default(),
            broker: BrokerConfig::default(),
            #[cfg(feature = "http")]
            http: crate::http::HttpConfig::default(),
            #[cfg(feature = "ws")]
            ws: crate::ws::WsConfig::default(),
            presence_events: Vec::new(),
        }
    }
}

/// A configuration value that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key holds a value outside its allowed range.
    #[error("invalid config `{key}`: {reason}")]
    Invalid {
        /// The TOML key (also the flag name with `-` for `_`).
        key: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path given with `--config`.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a mistyped value.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// Path given with `--config`.
        path: String,
        /// The parser's message, which names the key.
        message: String,
    },
}

pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text; keys it leaves out keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis(1);
        if self.heartbeat_interval < ms {
            return Err(invalid("heartbeat_interval", "must be at least 1ms"));
        }
        self.validate_heartbeat_bounds()?;
        if !(1..=1000).contains(&self.max_missed) {
            return Err(invalid("max_missed", "must be between 1 and 1000"));
        }
        self.validate_duration_caps()?;
        if self.handshake_timeout < ms {
            return Err(invalid("handshake_timeout", "must be at least 1ms"));
        }
        if !(64..=16 * 1024 * 1024).contains(&self.max_frame) {
            return Err(invalid(
                "max_frame",
                "must be between 64 and 16777216 bytes",
            ));
        }
        if self.workers > 1024 {
            return Err(invalid("workers", "must be at most 1024"));
        }
        if self.outbound_budget < self.max_frame {
            return Err(invalid(
                "outbound_budget",
                format!("must be at least max_frame ({} bytes)", self.max_frame),
            ));
        }
        if self.history_size > 1_000_000 {
            return Err(invalid("history_size", "must be at most 1000000"));
        }
        if self.sweep_interval < ms {
            return Err(invalid("sweep_interval", "must be at least 1ms"));
        }
        if self.registry_restart_window < ms {
            return Err(invalid("registry_restart_window", "must be at least 1ms"));
        }
        if self.backlog == 0 {
            return Err(invalid("backlog", "must be at least 1"));
        }
        if self.tcp.keepalive_retries == Some(0) {
            return Err(invalid("tcp.keepalive_retries", "must be at least 1"));
        }
        for (key, value) in [
            ("tcp.keepalive_idle", self.tcp.keepalive_idle),
            ("tcp.keepalive_interval", self.tcp.keepalive_interval),
        ] {
            if value.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(invalid(
                    key,
                    "must be at least 1s (the kernel counts in seconds)",
                ));
            }
        }
        if self.server_name.is_empty() {
            return Err(invalid("server_name", "must not be empty"));
        }
        self.limits.validate()?;
        self.hooks.validate()?;
        self.broker.validate()?;
        if self.presence_events.iter().any(|p| p.len() > 256) {
            return Err(invalid(
                "presence_events",
                "prefixes must be at most 256 bytes",
            ));
        }
        #[cfg(feature = "http")]
        self.http.validate()?;
        #[cfg(feature = "ws")]
        self.ws.validate()?;
        Ok(())
    }

    /// No duration may be longer than [`MAX_DURATION`], so that none overflows when added to
    /// an instant or multiplied by a small factor.
    fn validate_duration_caps(&self) -> Result<(), ConfigError> {
        let durations = [
            ("handshake_timeout", Some(self.handshake_timeout)),
            ("close_timeout", Some(self.close_timeout)),
            ("history_ttl", Some(self.history_ttl)),
            ("sweep_interval", Some(self.sweep_interval)),
            (
                "registry_restart_window",
                Some(self.registry_restart_window),
            ),
            ("drain_timeout", Some(self.drain_timeout)),
            ("shutdown_reconnect", Some(self.shutdown_reconnect)),
            ("tcp.keepalive_idle", self.tcp.keepalive_idle),
            ("tcp.keepalive_interval", self.tcp.keepalive_interval),
            ("tcp.user_timeout", self.tcp.user_timeout),
            ("limits.max_connection_age", self.limits.max_connection_age),
            ("hooks.timeout", Some(self.hooks.timeout)),
            ("broker.presence_ttl", Some(self.broker.presence_ttl)),
            ("broker.probe_interval", Some(self.broker.probe_interval)),
            ("broker.command_timeout", Some(self.broker.command_timeout)),
        ];
        for (key, value) in durations {
            if value.is_some_and(|d| d > MAX_DURATION) {
                return Err(invalid(key, "must be at most 30 days"));
            }
        }
        Ok(())
    }

    /// Explicit bounds must hold the default interval, so that a client that asks for nothing
    /// gets a value a client could have asked for.
    fn validate_heartbeat_bounds(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval > MAX_HEARTBEAT {
            return Err(invalid("heartbeat_interval", "must be at most 24h"));
        }
        if let Some(min) = self.heartbeat_min {
            if min < Duration::from_millis(1) || min > self.heartbeat_interval {
                return Err(invalid(
                    "heartbeat_min",
                    format!(
                        "must be between 1ms and heartbeat_interval ({:?})",
                        self.heartbeat_interval
                    ),
                ));
            }
        }
        if let Some(max) = self.heartbeat_max {
            if max < self.heartbeat_interval || max > MAX_HEARTBEAT {
                return Err(invalid(
                    "heartbeat_max",
                    format!(
                        "must be between heartbeat_interval ({:?}) and 24h",
                        self.heartbeat_interval
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The range of intervals a client may be granted: the configured bounds, or the defaults
    /// widened to hold `heartbeat_interval`.
    pub fn heartbeat_bounds(&self) -> (Duration, Duration) {
        let min = self
            .heartbeat_min
            .unwrap_or_else(|| DEFAULT_HEARTBEAT_MIN.min(self.heartbeat_interval));
        let max = self
            .heartbeat_max
            .unwrap_or_else(|| DEFAULT_HEARTBEAT_MAX.max(self.heartbeat_interval));
        (min, max)
    }

    /// The interval granted to a client that asked for `requested_ms` in `hello.heartbeat`:
    /// the nearest value within [`heartbeat_bounds`](Self::heartbeat_bounds), or
    /// `heartbeat_interval` when it asked for nothing.
    pub fn grant_heartbeat(&self, requested_ms: Option<u64>) -> Duration {
        let Some(ms) = requested_ms else {
            return self.heartbeat_interval;
        };
        let (min, max) = self.heartbeat_bounds();
        Duration::from_millis(ms).clamp(min, max)
    }

    /// Number of worker arbiters: `workers`, or the number of cores when it is 0.
    pub(crate) fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Silence after which a peer is certainly dead: `(max_missed + 1) × heartbeat_interval`.
    pub fn dead_after(&self) -> Duration {
        self.heartbeat_interval * (self.max_missed + 1)
    }

    /// Keep-alive settings for accepted sockets.
    ///
    /// By default the kernel starts probing after one heartbeat interval of idleness and gives
    /// up (and `TCP_USER_TIMEOUT` fires) by `(max_missed + 1) × interval`: no later than the
    /// heartbeat would. The kernel counts whole seconds, so each value is at least 1 s.
    pub(crate) fn keepalive(&self) -> Keepalive {
        let secs = |d: Duration| Duration::from_secs(d.as_secs().max(1));
        let dead = secs(self.dead_after());
        let idle = self
            .tcp
            .keepalive_idle
            .unwrap_or_else(|| secs(self.heartbeat_interval));
        let retries = self.tcp.keepalive_retries.unwrap_or(self.max_missed.max(1));
        let interval = self
            .tcp
            .keepalive_interval
            .unwrap_or_else(|| secs(dead.saturating_sub(idle) / retries));
        Keepalive {
            idle,
            interval,
            retries,
            user_timeout: self.tcp.user_timeout.unwrap_or(dead),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_and_names_bad_keys() {
        let c = Config::from_toml("heartbeat_interval = \"200ms\"\nmax_missed = 3\n").unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.max_missed, 3);
        assert_eq!(c.max_frame, 65536);
        let err = Config::from_toml("max_mised = 3").unwrap_err();
        assert!(err.contains("max_mised"), "{err}");
        let err = Config {
            max_missed: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("max_missed"), "{err}");
    }

    #[test]
    fn values_that_would_overflow_are_refused_by_name() {
        let mut c = Config {
            max_missed: u32::MAX,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("max_missed"));
        c.max_missed = 2;
        c.broker.command_timeout = Duration::MAX;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("broker.command_timeout"), "{err}");
        c.broker.command_timeout = Duration::from_secs(1);
        c.shutdown_reconnect = Duration::from_secs(u64::MAX / 1000);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("shutdown_reconnect"), "{err}");
    }

    #[test]
    fn heartbeat_requests_are_granted_within_the_bounds() {
        let c = Config::default();
        assert_eq!(
            c.heartbeat_bounds(),
            (Duration::from_secs(5), Duration::from_secs(300))
        );
        assert_eq!(c.grant_heartbeat(None), Duration::from_secs(30));
        assert_eq!(c.grant_heartbeat(Some(0)), Duration::from_secs(5));
        assert_eq!(c.grant_heartbeat(Some(60_000)), Duration::from_secs(60));
        assert_eq!(c.grant_heartbeat(Some(u64::MAX)), Duration::from_secs(300));
        // the default bounds widen to hold a short (test) interval
        let fast = Config {
            heartbeat_interval: Duration::from_millis(100),
            ..Config::default()
        };
        assert_eq!(fast.heartbeat_bounds().0, Duration::from_millis(100));
        fast.validate().unwrap();
        // explicit bounds must hold the default interval
        for (min, max, key) in [
            (Some(Duration::from_secs(31)), None, "heartbeat_min"),
            (Some(Duration::ZERO), None, "heartbeat_min"),
            (None, Some(Duration::from_secs(29)), "heartbeat_max"),
            (None, Some(Duration::from_secs(90_000)), "heartbeat_max"),
        ] {
            let err = Config {
                heartbeat_min: min,
                heartbeat_max: max,
                ..Config::default()
            }
            .validate()
            .unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let c = Config::from_toml("heartbeat_min = \"1s\"\nheartbeat_max = \"1h\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.grant_heartbeat(Some(10)), Duration::from_secs(1));
        assert_eq!(
            c.grant_heartbeat(Some(7_200_000)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn keepalive_derives_from_heartbeat() {
        let k = Config::default().keepalive();
        assert_eq!(k.idle, Duration::from_secs(30));
        assert_eq!(k.retries, 2);
        assert_eq!(k.interval, Duration::from_secs(30));
        assert_eq!(k.user_timeout, Duration::from_secs(90));
        assert!(k.idle + k.interval * k.retries <= Config::default().dead_after());
    }
}
