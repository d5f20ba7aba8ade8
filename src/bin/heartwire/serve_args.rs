//! Command-line and environment layer over [`Config`]: `heartwire serve` flags, each also
//! readable from a `HEARTWIRE_*` variable. Precedence: flag, then environment, then the
//! `--config` file, then the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use heartwire::{Config, ConfigError, SendPolicy};

use crate::hook_args::HookArgs;
use crate::http_args::HttpArgs;
use crate::ws_args::WsArgs;

/// Parses a human duration (`200ms`, `30s`, `5m`) for command-line options.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (use a form like 200ms, 30s, 5m)"))
}

/// Options of `heartwire serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below. Server-wide settings are top-level keys named
    /// like their flag with `_` for `-` (`heartbeat_interval = "15s"`); the others sit in tables:
    /// `--tcp-*` in `[tcp]` (`user_timeout`), `--jwt-*` and `--auth-send` in `[auth]`, `--tls-*`
    /// in `[tls]`, the limits (`--max-connections` … `--max-connection-age`) in `[limits]`, the
    /// `--http*` and `--api-key*` flags in `[http]` (`listen`, `api_keys`, `tls`, ...), `--ws*`
    /// in `[ws]` (`listen`, `allowed_origins`, `close_linger`), `--hook-*` in `[hooks]` (`url`,
    /// `timeout`, …), `--broker*` in `[broker]` (`url`, `key_prefix`, ...). README lists every
    /// key.
    #[arg(long, env = "HEARTWIRE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 0.0.0.0:7700].
    #[arg(long, env = "HEARTWIRE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Time between server pings [default: 30s].
    #[arg(long, env = "HEARTWIRE_HEARTBEAT_INTERVAL", value_name = "DUR", value_parser = duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Shortest heartbeat interval a client may ask for in `hello` [default: 5s, or
    /// --heartbeat-interval when shorter].
    #[arg(long, env = "HEARTWIRE_HEARTBEAT_MIN", value_name = "DUR", value_parser = duration)]
    pub heartbeat_min: Option<Duration>,
    /// Longest heartbeat interval a client may ask for in `hello` [default: 5m, or
    /// --heartbeat-interval when longer].
    #[arg(long, env = "HEARTWIRE_HEARTBEAT_MAX", value_name = "DUR", value_parser = duration)]
    pub heartbeat_max: Option<Duration>,
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
    /// Registry crashes survived within --registry-restart-window; one more stops the server
    /// [default: 5].
    #[arg(long, env = "HEARTWIRE_MAX_REGISTRY_RESTARTS", value_name = "N")]
    pub max_registry_restarts: Option<u32>,
    /// The window of --max-registry-restarts [default: 10s].
    #[arg(long, env = "HEARTWIRE_REGISTRY_RESTART_WINDOW", value_name = "DUR", value_parser = duration)]
    pub registry_restart_window: Option<Duration>,
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
    /// Require HS256 tokens signed with this secret (at least 16 bytes) in `hello.token`.
    #[arg(
        long,
        env = "HEARTWIRE_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Require RS256/ES256 tokens verified with this PEM public key in `hello.token`.
    #[arg(long, env = "HEARTWIRE_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Whom a session may `send` to when its token has no `send` claim (every session without
    /// auth): any, none, or comma-separated user patterns like `support,bot-*` [default: any].
    #[arg(long, env = "HEARTWIRE_AUTH_SEND", value_name = "POLICY", value_parser = parse_send)]
    pub auth_send: Option<SendPolicy>,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "HEARTWIRE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "HEARTWIRE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Connections open at once [default: 100000].
    #[arg(long, env = "HEARTWIRE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections open at once per client IP; 0 = off [default: 0].
    #[arg(long, env = "HEARTWIRE_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Connections accepted per second; 0 = off [default: 0].
    #[arg(long, env = "HEARTWIRE_ACCEPT_RATE", value_name = "N")]
    pub accept_rate: Option<u32>,
    /// Sessions one user may have at once; 0 = off [default: 256].
    #[arg(long, env = "HEARTWIRE_MAX_SESSIONS_PER_USER", value_name = "N")]
    pub max_sessions_per_user: Option<usize>,
    /// Rooms one session may be subscribed to [default: 1024].
    #[arg(long, env = "HEARTWIRE_MAX_ROOMS_PER_SESSION", value_name = "N")]
    pub max_rooms_per_session: Option<usize>,
    /// Frames per second one session may send; 0 = off [default: 0].
    #[arg(long, env = "HEARTWIRE_MESSAGE_RATE", value_name = "N")]
    pub message_rate: Option<u32>,
    /// Burst above --message-rate; 0 = one second's worth [default: 0].
    #[arg(long, env = "HEARTWIRE_MESSAGE_BURST", value_name = "N")]
    pub message_burst: Option<u32>,
    /// End connections after this age (±10%) with `bye{reason:"max_age"}` [default: never].
    #[arg(long, env = "HEARTWIRE_MAX_CONNECTION_AGE", value_name = "DUR", value_parser = duration)]
    pub max_connection_age: Option<Duration>,
    /// Rooms whose subscribers get presence join/leave events: comma-separated name prefixes,
    /// `*` for every room [default: none].
    #[arg(
        long,
        env = "HEARTWIRE_PRESENCE_EVENTS",
        value_name = "PREFIXES",
        value_delimiter = ','
    )]
    pub presence_events: Option<Vec<String>>,
    /// Set SO_REUSEPORT on the listener, so that several heartwire processes (nodes sharing
    /// --broker) can listen on the same port [default: off].
    #[arg(long, env = "HEARTWIRE_REUSE_PORT")]
    pub reuse_port: bool,
    /// Share rooms, users, presence and history with other nodes through Redis:
    /// redis://[user:password@]HOST:PORT/DB, or rediss:// for TLS [default: in memory, one node].
    #[arg(
        long,
        env = "HEARTWIRE_BROKER",
        value_name = "URL",
        hide_env_values = true
    )]
    pub broker: Option<String>,
    /// Prefix of every Redis key and channel [default: heartwire].
    #[arg(long, env = "HEARTWIRE_BROKER_KEY_PREFIX", value_name = "PREFIX")]
    pub broker_key_prefix: Option<String>,
    /// This node's name (letters, digits, `_`), the start of its session ids [default: random].
    #[arg(long, env = "HEARTWIRE_BROKER_NODE", value_name = "NAME")]
    pub broker_node: Option<String>,
    /// Lifetime of a node's presence and sessions in Redis unless refreshed; a node that dies
    /// has its users leave within it [default: 60s].
    #[arg(long, env = "HEARTWIRE_BROKER_PRESENCE_TTL", value_name = "DUR", value_parser = duration)]
    pub broker_presence_ttl: Option<Duration>,
    /// Idle time after which the Redis subscription is probed [default: 5s].
    #[arg(long, env = "HEARTWIRE_BROKER_PROBE_INTERVAL", value_name = "DUR", value_parser = duration)]
    pub broker_probe_interval: Option<Duration>,
    /// Longest wait for one Redis command [default: 1s].
    #[arg(long, env = "HEARTWIRE_BROKER_COMMAND_TIMEOUT", value_name = "DUR", value_parser = duration)]
    pub broker_command_timeout: Option<Duration>,
    /// Start even when Redis cannot be reached (not ready until it can) [default: refuse].
    #[arg(long, env = "HEARTWIRE_BROKER_START_DEGRADED")]
    pub broker_start_degraded: bool,
    /// PEM CA certificates to verify a rediss:// Redis with [default: the system's roots].
    #[arg(long, env = "HEARTWIRE_BROKER_TLS_CA", value_name = "FILE")]
    pub broker_tls_ca: Option<PathBuf>,
    /// HTTP API options.
    #[command(flatten)]
    pub http: HttpArgs,
    /// WebSocket options.
    #[command(flatten)]
    pub ws: WsArgs,
    /// HTTP hook options.
    #[command(flatten)]
    pub hooks: HookArgs,
}

/// Lays a flag over its config value when it was given (by flag or environment).
pub fn overlay<T: Clone>(value: &mut T, flag: &Option<T>) {
    if let Some(flag) = flag {
        value.clone_from(flag);
    }
}

/// Lays a flag over an optional config value when it was given (by flag or environment).
pub fn overlay_some<T: Clone>(value: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        value.clone_from(flag);
    }
}

fn parse_send(text: &str) -> Result<SendPolicy, String> {
    Ok(SendPolicy::parse(text))
}

impl ServeArgs {
    /// The configuration these options describe, validated.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        overlay(&mut c.listen, &self.listen);
        overlay(&mut c.heartbeat_interval, &self.heartbeat_interval);
        overlay(&mut c.max_missed, &self.max_missed);
        overlay(&mut c.handshake_timeout, &self.handshake_timeout);
        overlay(&mut c.max_frame, &self.max_frame);
        overlay(&mut c.max_bad_frames, &self.max_bad_frames);
        overlay(&mut c.workers, &self.workers);
        overlay(&mut c.outbound_budget, &self.outbound_budget);
        overlay(&mut c.close_timeout, &self.close_timeout);
        overlay(&mut c.history_size, &self.history_size);
        overlay(&mut c.history_ttl, &self.history_ttl);
        overlay(&mut c.sweep_interval, &self.sweep_interval);
        overlay(&mut c.drain_timeout, &self.drain_timeout);
        overlay(&mut c.max_registry_restarts, &self.max_registry_restarts);
        overlay(
            &mut c.registry_restart_window,
            &self.registry_restart_window,
        );
        overlay(&mut c.shutdown_reconnect, &self.shutdown_reconnect);
        overlay(&mut c.backlog, &self.backlog);
        overlay_some(&mut c.heartbeat_min, &self.heartbeat_min);
        overlay_some(&mut c.heartbeat_max, &self.heartbeat_max);
        let t = &mut c.tcp;
        overlay_some(&mut t.keepalive_idle, &self.tcp_keepalive_idle);
        overlay_some(&mut t.keepalive_interval, &self.tcp_keepalive_interval);
        overlay_some(&mut t.keepalive_retries, &self.tcp_keepalive_retries);
        overlay_some(&mut t.user_timeout, &self.tcp_user_timeout);
        overlay_some(&mut c.auth.jwt_secret, &self.jwt_secret);
        overlay_some(&mut c.auth.jwt_public_key, &self.jwt_public_key);
        overlay(&mut c.auth.send, &self.auth_send);
        overlay_some(&mut c.tls.cert, &self.tls_cert);
        overlay_some(&mut c.tls.key, &self.tls_key);
        let l = &mut c.limits;
        overlay(&mut l.max_connections, &self.max_connections);
        overlay(&mut l.max_connections_per_ip, &self.max_connections_per_ip);
        overlay(&mut l.accept_rate, &self.accept_rate);
        overlay(&mut l.max_sessions_per_user, &self.max_sessions_per_user);
        overlay(&mut l.max_rooms_per_session, &self.max_rooms_per_session);
        overlay(&mut l.message_rate, &self.message_rate);
        overlay(&mut l.message_burst, &self.message_burst);
        overlay_some(&mut l.max_connection_age, &self.max_connection_age);
        overlay(&mut c.presence_events, &self.presence_events);
        c.reuse_port |= self.reuse_port;
        let b = &mut c.broker;
        overlay_some(&mut b.url, &self.broker);
        overlay(&mut b.key_prefix, &self.broker_key_prefix);
        overlay_some(&mut b.node, &self.broker_node);
        overlay(&mut b.presence_ttl, &self.broker_presence_ttl);
        overlay(&mut b.probe_interval, &self.broker_probe_interval);
        overlay(&mut b.command_timeout, &self.broker_command_timeout);
        b.start_degraded |= self.broker_start_degraded;
        overlay_some(&mut b.tls_ca, &self.broker_tls_ca);
        self.http.apply(&mut c.http);
        self.ws.apply(&mut c.ws);
        self.hooks.apply(&mut c.hooks);
        c.validate()?;
        Ok(c)
    }
}

/// Options of `heartwire token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The HS256 secret the server was given with --jwt-secret.
    #[arg(long, env = "HEARTWIRE_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The user (`sub` claim).
    #[arg(long)]
    pub user: String,
    /// Rooms the token allows (exact names or `prefix*`), comma-separated; all when absent.
    #[arg(long, value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// Users the token may `send` to (exact names or `prefix*`), comma-separated; the
    /// server's --auth-send when absent.
    #[arg(long, value_delimiter = ',')]
    pub send: Option<Vec<String>>,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub ttl: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `serve` flag reaches its config value, and flags not given leave the config's.
    #[test]
    fn each_flag_lands_on_its_config_value() {
        let ms = Duration::from_millis;
        let args = ServeArgs {
            listen: Some("127.0.0.1:9".parse().unwrap()),
            heartbeat_interval: Some(ms(2001)),
            heartbeat_min: Some(ms(1002)),
            heartbeat_max: Some(ms(1_000_003)),
            max_missed: Some(4),
            handshake_timeout: Some(ms(1004)),
            max_frame: Some(1005),
            max_bad_frames: Some(6),
            workers: Some(7),
            outbound_budget: Some(100_008),
            close_timeout: Some(ms(1009)),
            history_size: Some(10),
            history_ttl: Some(ms(1011)),
            sweep_interval: Some(ms(1012)),
            drain_timeout: Some(ms(1013)),
            max_registry_restarts: Some(14),
            registry_restart_window: Some(ms(1015)),
            shutdown_reconnect: Some(ms(1016)),
            backlog: Some(17),
            tcp_keepalive_idle: Some(ms(1018)),
            tcp_keepalive_interval: Some(ms(1019)),
            tcp_keepalive_retries: Some(20),
            tcp_user_timeout: Some(ms(1021)),
            jwt_secret: Some("a-secret-of-22-bytes-x".into()),
            auth_send: Some(SendPolicy::parse("none")),
            max_connections: Some(23),
            max_connections_per_ip: Some(24),
            accept_rate: Some(25),
            max_sessions_per_user: Some(26),
            max_rooms_per_session: Some(27),
            message_rate: Some(28),
            message_burst: Some(29),
            max_connection_age: Some(ms(1030)),
            presence_events: Some(vec!["p-".into()]),
            reuse_port: true,
            broker: Some("redis://127.0.0.1:31/".into()),
            broker_key_prefix: Some("prefix32".into()),
            broker_node: Some("node33".into()),
            broker_presence_ttl: Some(ms(100_034)),
            broker_probe_interval: Some(ms(1035)),
            broker_command_timeout: Some(ms(1036)),
            broker_start_degraded: true,
            ..ServeArgs::default()
        };
        let c = args.to_config().unwrap();
        let got = (
            (c.listen.to_string(), c.heartbeat_interval, c.heartbeat_min),
            (c.heartbeat_max, c.max_missed, c.handshake_timeout),
            (c.max_frame, c.max_bad_frames, c.workers, c.outbound_budget),
            (
                c.close_timeout,
                c.history_size,
                c.history_ttl,
                c.sweep_interval,
            ),
            (
                c.drain_timeout,
                c.max_registry_restarts,
                c.registry_restart_window,
            ),
            (c.shutdown_reconnect, c.backlog),
        );
        let want = (
            ("127.0.0.1:9".to_owned(), ms(2001), Some(ms(1002))),
            (Some(ms(1_000_003)), 4, ms(1004)),
            (1005, 6, 7, 100_008),
            (ms(1009), 10, ms(1011), ms(1012)),
            (ms(1013), 14, ms(1015)),
            (ms(1016), 17),
        );
        assert_eq!(got, want);
        let t = &c.tcp;
        assert_eq!(
            (t.keepalive_idle, t.keepalive_interval),
            (Some(ms(1018)), Some(ms(1019)))
        );
        assert_eq!(
            (t.keepalive_retries, t.user_timeout),
            (Some(20), Some(ms(1021)))
        );
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("a-secret-of-22-bytes-x"));
        assert_eq!(c.auth.jwt_public_key, None, "not given: the config's");
        assert_eq!(c.auth.send, SendPolicy::parse("none"));
        assert_eq!((c.tls.cert.as_ref(), c.tls.key.as_ref()), (None, None));
        let l = &c.limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip, l.accept_rate),
            (23, 24, 25)
        );
        assert_eq!((l.max_sessions_per_user, l.max_rooms_per_session), (26, 27));
        assert_eq!(
            (l.message_rate, l.message_burst, l.max_connection_age),
            (28, 29, Some(ms(1030)))
        );
        assert_eq!(c.presence_events, ["p-"]);
        assert!(c.reuse_port);
        let b = &c.broker;
        assert_eq!(
            (b.url.as_deref(), b.key_prefix.as_str(), b.node.as_deref()),
            (Some("redis://127.0.0.1:31/"), "prefix32", Some("node33"))
        );
        assert_eq!(
            (b.presence_ttl, b.probe_interval, b.command_timeout),
            (ms(100_034), ms(1035), ms(1036))
        );
        assert!(b.start_degraded);
        assert_eq!(b.tls_ca, None);

        // The paths: given ones land, and nothing given keeps the defaults.
        let paths = ServeArgs {
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            jwt_public_key: Some("jwt.pem".into()),
            broker: Some("rediss://127.0.0.1:37/".into()),
            broker_tls_ca: Some("ca.pem".into()),
            ..ServeArgs::default()
        };
        let c = paths.to_config().unwrap();
        assert_eq!(
            (
                c.tls.cert,
                c.tls.key,
                c.auth.jwt_public_key,
                c.broker.tls_ca
            ),
            (
                Some("cert.pem".into()),
                Some("key.pem".into()),
                Some("jwt.pem".into()),
                Some("ca.pem".into())
            )
        );
        let defaults = ServeArgs::default().to_config().unwrap();
        let default = Config::default();
        assert_eq!(
            (
                defaults.listen,
                defaults.heartbeat_interval,
                defaults.limits.max_connections
            ),
            (
                default.listen,
                default.heartbeat_interval,
                default.limits.max_connections
            )
        );
    }
}
