//! The accept loop: socket options from the heartbeat, limits at the door, and the hand-off
//! of each connection to a worker arbiter.
//!
//! The listener is built with socket2 (`SO_REUSEADDR`, `SO_REUSEPORT` when asked, a
//! configurable backlog) and every
//! accepted socket gets `TCP_NODELAY`, keep-alive and `TCP_USER_TIMEOUT` derived from the
//! heartbeat (see [`Config::keepalive`]). Sessions are spread round-robin over `workers`
//! arbiters. Accept errors never end the loop: running out of file descriptors or memory is
//! logged and waited out, a connection aborted before accept is skipped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Keepalive};
use crate::limits::{ConnectionPermit, ConnectionTracker, Refusal};
use crate::metrics::Limit;
use crate::outbox::Worker;
use crate::protocol::{ByeReason, Outbound};
use crate::session::{Session, SessionShared};
use crate::tls::TlsAcceptor;

pub(super) fn bind(config: &Config) -> io::Result<TcpListener> {
    TcpListener::from_std(listen_on(config.listen, config)?)
}

/// A non-blocking listening socket on `addr` with `SO_REUSEADDR`, `SO_REUSEPORT` when
/// `reuse_port` is set, and the configured backlog.
pub(crate) fn listen_on(addr: SocketAddr, config: &Config) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if config.reuse_port {
        // Several processes (nodes of one cluster) listen on this port; the kernel spreads
        // new connections over them.
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Applies the per-connection socket options: to an accepted socket, or to a listener whose
/// accepted sockets inherit them (Linux copies them to each new connection), which is how
/// the WebSocket listener, whose accept loop is actix-web's, gets them.
pub(crate) fn tune(sock: SockRef<'_>, keepalive: &Keepalive) -> io::Result<()> {
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

pub(super) struct AcceptLoop {
    pub(super) listener: TcpListener,
    pub(super) shared: Arc<SessionShared>,
    pub(super) tls: Option<TlsAcceptor>,
    pub(super) tracker: Arc<ConnectionTracker>,
    pub(super) accept_rate: Option<governor::DefaultDirectRateLimiter>,
    pub(super) workers: Vec<Arc<Worker>>,
    pub(super) keepalive: Keepalive,
    pub(super) stop: CancellationToken,
}

impl AcceptLoop {
    pub(super) async fn run(self) {
        let mut next = 0usize;
        loop {
            if let Some(rate) = self.accept_rate.as_ref().filter(|r| r.check().is_err()) {
                self.shared.metrics.limit_hit(Limit::AcceptRate);
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
                        Refusal::ServerFull => Limit::MaxConnections,
                        Refusal::IpLimit => Limit::MaxConnectionsPerIp,
                    });
                    refuse(&stream, refusal, bye);
                    continue;
                }
            };
            if let Err(error) = tune(SockRef::from(&stream), &self.keepalive) {
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
            let worker = self.workers[next % self.workers.len()].clone();
            next = next.wrapping_add(1);
            let spawned = worker.clone().spawn(async move {
                let stream = match TcpStream::from_std(std_stream) {
                    Ok(stream) => stream,
                    Err(error) => return tracing::warn!(%peer, %error, "cannot register socket"),
                };
                match tls {
                    None => {
                        Session::start_tcp(stream, peer, shared, Some(permit), worker);
                    }
                    Some(tls) => start_tls(tls, stream, peer, shared, permit).await,
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

/// Runs the TLS handshake (bounded by the handshake timeout), then the session.
#[cfg(feature = "tls")]
async fn start_tls(
    tls: TlsAcceptor,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<SessionShared>,
    permit: ConnectionPermit,
) {
    let handshake = tokio::time::timeout(shared.config.handshake_timeout, tls.accept(stream));
    match handshake.await {
        Ok(Ok(stream)) => {
            Session::start(stream, peer, shared, Some(permit));
        }
        Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
    }
}

#[cfg(not(feature = "tls"))]
async fn start_tls(
    tls: TlsAcceptor,
    _: TcpStream,
    _: std::net::SocketAddr,
    _: Arc<SessionShared>,
    _: ConnectionPermit,
) {
    match tls {}
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
    let resources_exhausted = error.kind() == io::ErrorKind::OutOfMemory
        || matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
    if resources_exhausted {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(1)
    }
}
