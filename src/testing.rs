//! Internals that the crate's own benchmarks and integration tests reach. Not part of the
//! API: anything here may change in any release.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::Metrics;
use crate::names::{NameLimits, RoomName, UserName};
pub use crate::outbox::Outbox;
use crate::outbox::{OnEvent, Worker};
pub use crate::protocol::codec::LineCodec;
use crate::protocol::{Inbound, Outbound};
use crate::registry::{self, SessionId};
use crate::session::{Session, SessionGauge};
use crate::ServerHandle;

/// Parses one client line the way a session does; `true` when it is a valid frame.
pub fn parse_frame(line: &[u8]) -> bool {
    Inbound::parse_limited(line, &NameLimits::default()).is_ok()
}

/// Encodes a server `ping`.
pub fn encode_ping(seq: u64) -> Bytes {
    Outbound::Ping { seq }.encode()
}

/// Serves `io` (any byte stream, e.g. an in-memory pipe) as a session of `server`, on the
/// current arbiter.
pub fn start_session<S>(server: &ServerHandle, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + 'static,
{
    Session::start(io, peer, server.shared().clone(), None);
}

/// Runs the registry's sweep now instead of at its next tick.
pub async fn sweep_now(server: &ServerHandle) {
    let _ = server.registry().send(registry::SweepNow).await;
}

/// Registers a session whose actor is already dead and which will never unregister: what a
/// session that died without its `stopped` hook leaves behind, for the sweep to find. `id`
/// must be far above the ids the server hands out.
pub async fn register_dead_session(server: &ServerHandle, id: u64, user: &str, rooms: &[&str]) {
    let (tx, rx) = actix::dev::channel::channel::<Session>(16);
    drop(rx);
    let id = SessionId(id);
    let registry = server.registry();
    let connect = registry::Connect {
        id,
        addr: actix::Addr::new(tx),
        outbox: Outbox::new(64 * 1024),
        gauge: SessionGauge::new(
            format!("ghost-{}", id.0).into(),
            SocketAddr::from(([127, 0, 0, 1], 9)),
        ),
    };
    if !matches!(registry.send(connect).await, Ok(Ok(()))) {
        return;
    }
    let _ = registry
        .send(registry::Identify {
            id,
            user: UserName::checked(user),
            welcome: bytes::Bytes::new(),
        })
        .await;
    for room in rooms {
        let _ = registry
            .send(registry::Subscribe {
                id,
                room: RoomName::checked(*room),
                since: None,
                epoch: None,
            })
            .await;
    }
}

/// A TLS connector trusting the CA in the PEM file `ca_pem`, for raw TLS test clients.
#[cfg(feature = "tls")]
pub fn tls_connector(ca_pem: &std::path::Path) -> tokio_rustls::TlsConnector {
    match crate::tls::connector_with_ca(ca_pem) {
        Ok(connector) => connector,
        Err(e) => panic!("test CA {}: {e}", ca_pem.display()),
    }
}

/// A [`RedisBroker`](crate::broker::RedisBroker) for the node `node`, connected as the server
/// would connect it (on the current arbiter), with metrics of its own.
#[cfg(feature = "redis")]
pub async fn redis_broker(
    config: &crate::broker::BrokerConfig,
    limits: crate::broker::HistoryLimits,
    node: &str,
) -> Result<crate::broker::RedisBroker, crate::broker::BrokerError> {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    crate::broker::RedisBroker::connect(config, limits, node.to_owned(), metrics).await
}

/// Outboxes for accepted plain TCP connections, as server sessions have them, all written by
/// the current arbiter (one worker): a frame pushed here into an empty outbox is written at
/// once with `try_write`, frames pushed from other threads come in per-worker batches, and a
/// write that would block is finished by a flush task on this arbiter. Call it on the arbiter
/// that is to write the sockets, once per arbiter.
pub fn direct_outboxes(streams: Vec<tokio::net::TcpStream>, budget: usize) -> Vec<Arc<Outbox>> {
    let worker = Worker::new(actix_rt::Arbiter::current());
    worker.enter();
    let metrics = Arc::new(Metrics::new());
    streams
        .into_iter()
        .map(|stream| {
            let (_read, write) = stream.into_split();
            let me = Arc::new(OnceLock::<Weak<Outbox>>::new());
            let on_event: OnEvent = {
                let (me, worker) = (me.clone(), worker.clone());
                Box::new(move |_| {
                    if let Some(outbox) = me.get().and_then(Weak::upgrade) {
                        worker.spawn(async move {
                            outbox.flush(Duration::from_secs(5)).await;
                        });
                    }
                })
            };
            let outbox = Outbox::direct(budget, metrics.clone(), on_event, write, worker.clone());
            let _ = me.set(Arc::downgrade(&outbox));
            outbox
        })
        .collect()
}

/// Outboxes for accepted plain TCP connections drained by one writer task each on the current
/// arbiter: the path TLS and WebSocket connections take, and plain TCP took before direct
/// writes.
pub fn task_outboxes(streams: Vec<tokio::net::TcpStream>, budget: usize) -> Vec<Arc<Outbox>> {
    let metrics = Arc::new(Metrics::new());
    streams
        .into_iter()
        .map(|stream| {
            let (_read, write) = stream.into_split();
            let outbox = Outbox::for_session(budget, metrics.clone(), Box::new(|_| {}));
            actix_rt::spawn(outbox.clone().run_writer(write, Duration::from_secs(5)));
            outbox
        })
        .collect()
}
