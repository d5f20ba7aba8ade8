//! Client settings: where to connect, who to be, and every bound and timer.
//!
//! Defaults suit an application talking to a heartwire server over a LAN or the internet:
//! connects give up after 5 s, the backoff starts at 250 ms and is capped at 30 s, up to 1024
//! frames may wait for the server, 64 of them on the wire at once.

use std::time::Duration;

use super::backoff::BackoffConfig;

/// TLS for the client's connections: a rustls connector and the name to verify the server's
/// certificate against.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct ClientTls {
    /// The connector, e.g. from [`ClientTls::with_ca`].
    pub connector: tokio_rustls::TlsConnector,
    /// DNS name or IP address the server's certificate must be valid for.
    pub server_name: String,
}

#[cfg(feature = "tls")]
impl ClientTls {
    /// TLS trusting the CA certificates in the PEM file `ca_pem` (a server with a private CA),
    /// verifying the server's certificate against `server_name`.
    pub fn with_ca(
        ca_pem: &std::path::Path,
        server_name: impl Into<String>,
    ) -> Result<ClientTls, crate::ConfigError> {
        Ok(ClientTls {
            connector: crate::tls::connector_with_ca(ca_pem)?,
            server_name: server_name.into(),
        })
    }
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Everything a client can be told.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server address, `host:port` (resolved again on every connection attempt).
    pub addr: String,
    /// User name for `hello` (required by servers without authentication).
    pub user: Option<String>,
    /// Token for `hello` (required by servers with authentication).
    pub token: Option<String>,
    /// Free text sent as `hello.client`.
    pub client_name: Option<String>,
    /// The heartbeat interval to ask the server for (`hello.heartbeat`); it grants the nearest
    /// value within its bounds, announced in `welcome`, which the dead-server check then uses.
    /// Long intervals save a mobile client's battery. `None`: the server's default.
    pub heartbeat: Option<Duration>,
    /// Longest wait for the TCP connection to be made.
    pub dial_timeout: Duration,
    /// Longest wait for `welcome` after `hello`.
    pub handshake_timeout: Duration,
    /// Default timeout of [`ClientHandle::request`](super::ClientHandle::request).
    pub request_timeout: Duration,
    /// Reconnect schedule.
    pub backoff: BackoffConfig,
    /// Frames (publishes, sends, requests) that may wait for an answer; one more fails with
    /// [`ClientError::QueueFull`](super::ClientError::QueueFull).
    pub max_pending: usize,
    /// Frames on the wire without an answer yet; the rest wait in the queue.
    pub max_in_flight: usize,
    /// Longest line accepted from the server, and the frame limit used until `welcome` tells
    /// the server's.
    pub max_frame: usize,
    /// Bytes the client may have queued for the socket beyond the in-flight window (control
    /// frames: pongs, subscribes). A server that stops reading costs at most this much.
    pub outbound_budget: usize,
    /// Events buffered for the application before the client stops reading the socket.
    pub event_buffer: usize,
    /// Mailbox capacity of the client actor (calls from handles beyond it wait).
    pub mailbox: usize,
    /// TLS settings; `None` connects in plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<ClientTls>,
}

impl ClientConfig {
    /// Settings to connect to `addr` as `user`, with defaults for the rest.
    pub fn new(addr: impl Into<String>, user: impl Into<String>) -> Self {
        ClientConfig {
            addr: addr.into(),
            user: Some(user.into()),
            token: None,
            client_name: Some(format!("heartwire-client/{}", env!("CARGO_PKG_VERSION"))),
            heartbeat: None,
            dial_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            max_pending: 1024,
            max_in_flight: 64,
            max_frame: 65536,
            outbound_budget: 256 * 1024,
            event_buffer: 256,
            mailbox: 64,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Connects with TLS, verifying the server against `tls`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Uses a token (the user is then the token's subject, and may be left out).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Asks the server for heartbeats every `interval` (see [`ClientConfig::heartbeat`]).
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// Sets the reconnect schedule.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }
}
