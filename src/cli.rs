//! Command-line and environment layer over [`Config`]: `heartwire serve` flags, each also
//! readable from a `HEARTWIRE_*` variable. Precedence: flag, then environment, then the
//! `--config` file, then the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::{Config, ConfigError};

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (use a form like 200ms, 30s, 5m)"))
}

/// Options of `heartwire serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the long flags with `_` for `-`).
    #[arg(long, env = "HEARTWIRE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 0.0.0.0:7700].
    #[arg(long, env = "HEARTWIRE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Time between server pings [default: 30s].
    #[arg(long, env = "HEARTWIRE_HEARTBEAT_INTERVAL", value_name = "DUR", value_parser = duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Missed pings in a row that close a silent connection [default: 2].
    #[arg(long, env = "HEARTWIRE_MAX_MISSED", value_name = "N")]
    pub max_missed: Option<u32>,
    /// Time a new connection has to send `hello` [default: 10s].
    #[arg(long, env = "HEARTWIRE_HANDSHAKE_TIMEOUT", value_name = "DUR", value_parser = duration)]
    pub handshake_timeout: Option<Duration>,
    /// Longest accepted frame (line) in bytes [default: 65536].
    #[arg(long, env = "HEARTWIRE_MAX_FRAME", value_name = "BYTES")]
    pub max_frame: Option<usize>,
    /// Invalid lines tolerated before closing with `protocol_error` [default: 10].
    #[arg(long, env = "HEARTWIRE_MAX_BAD_FRAMES", value_name = "N")]
    pub max_bad_frames: Option<u32>,
    /// Worker threads sessions are spread over; 0 = one per core [default: 0].
    #[arg(long, env = "HEARTWIRE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Outbound bytes a session may have queued before it is cut off as a slow consumer
    /// [default: 1048576].
    #[arg(long, env = "HEARTWIRE_OUTBOUND_BUDGET", value_name = "BYTES")]
    pub outbound_budget: Option<usize>,
    /// Longest time spent flushing a closing connection [default: 5s].
    #[arg(long, env = "HEARTWIRE_CLOSE_TIMEOUT", value_name = "DUR", value_parser = duration)]
    pub close_timeout: Option<Duration>,
    /// Messages kept per room for recovery and dedupe [default: 1000].
    #[arg(long, env = "HEARTWIRE_HISTORY_SIZE", value_name = "N")]
    pub history_size: Option<usize>,
    /// Age after which a message leaves the history [default: 5m].
    #[arg(long, env = "HEARTWIRE_HISTORY_TTL", value_name = "DUR", value_parser = duration)]
    pub history_ttl: Option<Duration>,
    /// Interval of the registry sweep for dead sessions and empty rooms [default: 30s].
    #[arg(long, env = "HEARTWIRE_SWEEP_INTERVAL", value_name = "DUR", value_parser = duration)]
    pub sweep_interval: Option<Duration>,
    /// Longest graceful shutdown [default: 10s].
    #[arg(long, env = "HEARTWIRE_DRAIN_TIMEOUT", value_name = "DUR", value_parser = duration)]
    pub drain_timeout: Option<Duration>,
    /// Base of the jittered `reconnect_ms` hint sent on shutdown [default: 1s].
    #[arg(long, env = "HEARTWIRE_SHUTDOWN_RECONNECT", value_name = "DUR", value_parser = duration)]
    pub shutdown_reconnect: Option<Duration>,
    /// Listen backlog [default: 4096].
    #[arg(long, env = "HEARTWIRE_BACKLOG", value_name = "N")]
    pub backlog: Option<u32>,
    /// TCP keep-alive idle time [default: the heartbeat interval].
    #[arg(long, env = "HEARTWIRE_TCP_KEEPALIVE_IDLE", value_name = "DUR", value_parser = duration)]
    pub tcp_keepalive_idle: Option<Duration>,
    /// TCP keep-alive probe interval [default: derived so the kernel gives up by
    /// (max_missed + 1) × heartbeat interval].
    #[arg(long, env = "HEARTWIRE_TCP_KEEPALIVE_INTERVAL", value_name = "DUR", value_parser = duration)]
    pub tcp_keepalive_interval: Option<Duration>,
    /// TCP keep-alive probes before the kernel drops the connection [default: max_missed].
    #[arg(long, env = "HEARTWIRE_TCP_KEEPALIVE_RETRIES", value_name = "N")]
    pub tcp_keepalive_retries: Option<u32>,
    /// TCP_USER_TIMEOUT [default: (max_missed + 1) × heartbeat interval].
    #[arg(long, env = "HEARTWIRE_TCP_USER_TIMEOUT", value_name = "DUR", value_parser = duration)]
    pub tcp_user_timeout: Option<Duration>,
    /// Rooms whose subscribers get presence join/leave events: comma-separated name prefixes,
    /// `*` for every room [default: none].
    #[arg(
        long,
        env = "HEARTWIRE_PRESENCE_EVENTS",
        value_name = "PREFIXES",
        value_delimiter = ','
    )]
    pub presence_events: Option<Vec<String>>,
    /// HTTP API options.
    #[command(flatten)]
    pub http: crate::http::HttpArgs,
}

impl ServeArgs {
    /// The configuration these options describe, validated.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { c.$field = v; } )* };
        }
        set!(
            listen,
            heartbeat_interval,
            max_missed,
            handshake_timeout,
            max_frame,
            max_bad_frames,
            workers,
            outbound_budget,
            close_timeout,
            history_size,
            history_ttl,
            sweep_interval,
            drain_timeout,
            shutdown_reconnect,
            backlog
        );
        c.tcp.keepalive_idle = self.tcp_keepalive_idle.or(c.tcp.keepalive_idle);
        c.tcp.keepalive_interval = self.tcp_keepalive_interval.or(c.tcp.keepalive_interval);
        c.tcp.keepalive_retries = self.tcp_keepalive_retries.or(c.tcp.keepalive_retries);
        c.tcp.user_timeout = self.tcp_user_timeout.or(c.tcp.user_timeout);
        if let Some(prefixes) = &self.presence_events {
            c.presence_events = prefixes.clone();
        }
        self.http.apply(&mut c.http);
        c.validate()?;
        Ok(c)
    }
}
