//! Starting and stopping a server: the listener, the accept loop, the worker arbiters and
//! the supervised registry.
//!
//! The listener is built with socket2 (`SO_REUSEADDR`, a configurable backlog) and every
//! accepted socket gets `TCP_NODELAY`, keep-alive and `TCP_USER_TIMEOUT` derived from the
//! heartbeat (see [`Config::keepalive`]). Sessions are spread round-robin over `workers`
//! arbiters. Accept errors never end the loop: running out of file descriptors is logged and
//! waited out, a connection aborted before accept is skipped.
//!
//! [`ServerHandle::shutdown`] is the graceful path: stop accepting, `bye{reason:"shutdown"}`
//! to every session with a jittered `reconnect_ms`, and wait until all are gone or the drain
//! timeout passes.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::Arbiter;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::broker::{Broker, HistoryLimits, MemoryBroker};
use crate::config::{Config, ConfigError, Keepalive};
use crate::handler::{FrameHandler, Handlers};
use crate::http::HttpRunning;
use crate::limits::{ConnectionTracker, Refusal};
use crate::metrics::Metrics;
use crate::protocol::{ByeReason, Outbound};
use crate::registry::{Drain, Registry, RegistryLimits};
use crate::session::{Session, SessionShared};

/// Builds the broker inside the registry's arbiter (brokers need not be `Send`).
type BrokerFactory = Box<dyn FnOnce(&Config) -> Rc<dyn Broker> + Send>;

/// Configures and starts a server. Call [`ServerBuilder::start`] inside a running actix
/// `System` (for example under `#[actix_rt::main]` or in an actix-web app).
pub struct ServerBuilder {
    config: Config,
    handlers: Handlers,
    broker: Option<BrokerFactory>,
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The HTTP API could not be set up.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The configured address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
}

impl ServerBuilder {
    /// A builder with `config` and no application handlers.
    pub fn new(config: Config) -> Self {
        let mut handlers = Handlers::default();
        crate::presence::install(&mut handlers);
        ServerBuilder {
            config,
            handlers,
            broker: None,
        }
    }

    /// Routes frames of `kind` (a type protocol v1 does not define) to `handler`.
    pub fn frame_handler(mut self, kind: impl Into<String>, handler: impl FrameHandler) -> Self {
        self.handlers.insert(kind, handler);
        self
    }

    /// Replaces the embedded [`MemoryBroker`]; `make` runs on the registry's arbiter.
    pub fn broker<B, F>(mut self, make: F) -> Self
    where
        B: Broker,
        F: FnOnce(&Config) -> B + Send + 'static,
    {
        self.broker = Some(Box::new(move |config| {
            Rc::new(make(config)) as Rc<dyn Broker>
        }));
        self
    }

    /// Validates the configuration, binds the listener and starts the registry, the
    /// workers and the accept loop.
    pub fn start(self) -> Result<ServerHandle, StartError> {
        let config = self.config;
        config.validate()?;
        let authenticator = Authenticator::from_config(&config.auth)?;
        if authenticator.is_none() {
            tracing::warn!(
                "no authentication configured (auth.jwt_secret or auth.jwt_public_key): \
                 clients are trusted to be the user they claim in hello"
            );
        }
        let tls = config.tls.acceptor()?;
        let listener = bind(&config).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let http_listener = crate::http::bind(&config.http)?;

        let metrics = Arc::new(Metrics::new());
        let registry_arbiter = Arbiter::new();
        let make_broker = self.broker.unwrap_or_else(|| {
            Box::new(|config: &Config| {
                Rc::new(MemoryBroker::new(HistoryLimits {
                    size: config.history_size,
                    ttl: config.history_ttl,
                })) as Rc<dyn Broker>
            })
        });
        let registry_config = config.clone();
        let registry_metrics = metrics.clone();
        let registry = Registry::start_supervised(&registry_arbiter.handle(), move || {
            let broker = make_broker(&registry_config);
            Registry::new(broker, registry_config.sweep_interval)
                .with_limits(RegistryLimits {
                    max_sessions_per_user: registry_config.limits.max_sessions_per_user,
                    max_rooms_per_session: registry_config.limits.max_rooms_per_session,
                })
                .with_metrics(registry_metrics)
                .with_presence_events(registry_config.presence_events.clone())
        });

        let workers: Vec<Arbiter> = (0..config.worker_count()).map(|_| Arbiter::new()).collect();
        let shared = SessionShared::new(
            config.clone(),
            registry.clone(),
            self.handlers,
            authenticator,
            metrics.clone(),
        );
        let stop_accepting = CancellationToken::new();
        let accept = AcceptLoop {
            listener,
            shared,
            tls,
            tracker: ConnectionTracker::new(&config.limits),
            accept_rate: config.limits.accept_rate_limiter(),
            workers: workers.iter().map(Arbiter::handle).collect(),
            keepalive: config.keepalive(),
            stop: stop_accepting.clone(),
        };
        actix_rt::spawn(accept.run());
        tracing::info!(%local_addr, workers = workers.len(), tls = config.tls.cert.is_some(), "listening");

        let handle = ServerHandle {
            local_addr,
            registry,
            stop_accepting,
            drain_timeout: config.drain_timeout,
            shutdown_reconnect: config.shutdown_reconnect,
            arbiters: Arc::new(std::sync::Mutex::new(
                workers.into_iter().chain([registry_arbiter]).collect(),
            )),
            metrics,
            http: Arc::default(),
        };
        if let Some(listener) = http_listener {
            if let Err(e) = crate::http::serve(&handle, &config, listener) {
                handle.stop_now();
                return Err(e);
            }
        }
        Ok(handle)
    }
}

fn bind(config: &Config) -> io::Result<TcpListener> {
    let addr = config.listen;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// Applies the per-connection socket options.
fn tune(stream: &TcpStream, keepalive: &Keepalive) -> io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_tcp_nodelay(true)?;
    let params = TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.retries);
    sock.set_tcp_keepalive(&params)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(keepalive.user_timeout))?;
    Ok(())
}

struct AcceptLoop {
    listener: TcpListener,
    shared: Arc<SessionShared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tracker: Arc<ConnectionTracker>,
    accept_rate: Option<governor::DefaultDirectRateLimiter>,
    workers: Vec<actix_rt::ArbiterHandle>,
    keepalive: Keepalive,
    stop: CancellationToken,
}

impl AcceptLoop {
    async fn run(self) {
        let mut next = 0usize;
        loop {
            if let Some(rate) = self.accept_rate.as_ref().filter(|r| r.check().is_err()) {
                self.shared.metrics.limit_hit("accept_rate");
                // Waiting here leaves new connections in the listen backlog.
                tokio::select! {
                    () = self.stop.cancelled() => break,
                    () = rate.until_ready() => {}
                }
            }
            let accepted = tokio::select! {
                () = self.stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => {
                    self.shared.metrics.accepted();
                    pair
                }
                Err(error) => {
                    self.shared.metrics.accept_failed();
                    let pause = accept_error_pause(&error);
                    tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "accept failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let permit = match self.tracker.admit(peer.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    // A TLS client cannot read a plain-text bye: just close.
                    let bye = self
                        .tls
                        .is_none()
                        .then_some(self.shared.config.shutdown_reconnect);
                    self.shared.metrics.limit_hit(match refusal {
                        Refusal::ServerFull => "max_connections",
                        Refusal::IpLimit => "max_connections_per_ip",
                    });
                    refuse(&stream, refusal, bye);
                    continue;
                }
            };
            if let Err(error) = tune(&stream, &self.keepalive) {
                tracing::debug!(%peer, %error, "socket options not applied");
            }
            // A tokio socket belongs to the runtime that registered it: hand the worker a std
            // socket and let it register there.
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%peer, %error, "cannot move accepted socket to a worker");
                    continue;
                }
            };
            let shared = self.shared.clone();
            let tls = self.tls.clone();
            let worker = &self.workers[next % self.workers.len()];
            next = next.wrapping_add(1);
            let spawned = worker.spawn(async move {
                let stream = match TcpStream::from_std(std_stream) {
                    Ok(stream) => stream,
                    Err(error) => return tracing::warn!(%peer, %error, "cannot register socket"),
                };
                let Some(tls) = tls else {
                    Session::start(stream, peer, shared, Some(permit));
                    return;
                };
                let handshake =
                    tokio::time::timeout(shared.config.handshake_timeout, tls.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        Session::start(stream, peer, shared, Some(permit));
                    }
                    Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
            if !spawned {
                tracing::error!("worker arbiter is gone; stopping accept loop");
                break;
            }
        }
        tracing::info!("stopped accepting");
    }
}

/// Turns a connection away over a limit: with `reconnect` a best-effort `bye` with a
/// jittered `reconnect_ms`, then close. The socket is new, so its send buffer takes the line
/// at once.
fn refuse(stream: &TcpStream, refusal: Refusal, reconnect: Option<Duration>) {
    let reason = match refusal {
        Refusal::ServerFull => ByeReason::ServerFull,
        Refusal::IpLimit => ByeReason::TooManyConnections,
    };
    if let Some(reconnect) = reconnect {
        let base = reconnect.as_millis() as u64;
        let bye = Outbound::Bye {
            reason,
            reconnect_ms: Some(base + fastrand::u64(0..=base)),
        }
        .encode();
        let _ = stream.try_write(&bye);
    }
    tracing::warn!(peer = ?stream.peer_addr().ok(), %reason, "connection refused");
}

/// How long to wait after an accept error: out of descriptors or memory needs time for
/// connections to close; anything else is about one connection and needs none.
fn accept_error_pause(error: &io::Error) -> Duration {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    match error.raw_os_error() {
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM) => Duration::from_millis(100),
        _ => Duration::from_millis(1),
    }
}

/// A running server: its address, its registry, and the way to stop it.
#[derive(Clone)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    registry: Addr<Registry>,
    stop_accepting: CancellationToken,
    drain_timeout: Duration,
    shutdown_reconnect: Duration,
    arbiters: Arc<std::sync::Mutex<Vec<Arbiter>>>,
    metrics: Arc<Metrics>,
    http: Arc<std::sync::OnceLock<HttpRunning>>,
}

impl ServerHandle {
    /// The address the listener is bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry, to publish, send, kick or query from the application.
    pub fn registry(&self) -> &Addr<Registry> {
        &self.registry
    }

    /// The server's metrics (see [`ServerHandle::render_metrics`] for the scrape text).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The address of the HTTP API, when the server runs one (`http.listen`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.get().map(|h| h.addr)
    }

    /// Stops accepting and the arbiters at once, without a drain (a failed start).
    fn stop_now(&self) {
        self.stop_accepting.cancel();
        let arbiters =
            std::mem::take(&mut *self.arbiters.lock().unwrap_or_else(|p| p.into_inner()));
        for arbiter in arbiters {
            arbiter.stop();
        }
    }

    pub(crate) fn set_http(&self, running: HttpRunning) {
        let _ = self.http.set(running);
    }

    /// Graceful shutdown: stops accepting, sends every session `bye{reason:"shutdown"}` and
    /// waits until all are closed or `drain_timeout` passes. Returns `true` when every session
    /// closed in time. The worker arbiters are stopped afterwards.
    pub async fn shutdown(&self) -> bool {
        self.stop_accepting.cancel();
        let drain = self.registry.send(Drain {
            reconnect_ms: self.shutdown_reconnect.as_millis() as u64,
        });
        let drained = matches!(
            tokio::time::timeout(self.drain_timeout, drain).await,
            Ok(Ok(()))
        );
        if !drained {
            tracing::warn!(timeout = ?self.drain_timeout, "drain timed out; closing the rest");
        }
        if let Some(http) = self.http.get() {
            // After the drain, so that `/readyz` reported it while it lasted.
            http.handle.stop(true).await;
        }
        let arbiters =
            std::mem::take(&mut *self.arbiters.lock().unwrap_or_else(|p| p.into_inner()));
        for arbiter in arbiters {
            arbiter.stop();
        }
        drained
    }
}
