//! The WebSocket transport set-up, in one place so that `/ws` and the Autobahn echo server
//! (`examples/ws_echo.rs`) run exactly the same code: the actix-web server with its
//! timeouts, TLS and socket options ([`serve`]), and the upgrade with its origin check, frame
//! guard and message-size limits ([`WsTransport::upgrade`]).
//!
//! actix-ws is used as it comes except for two things its defaults get wrong for a server
//! that must bound memory per connection: its frame and continuation limits are set
//! explicitly, and the body passes through a frame guard (`guard.rs`) first. Writes go through
//! actix-ws's bounded channel; [`Upgraded`] also carries a flow signal with which the
//! session's writer keeps at most [`WINDOW`] bytes in that channel, so a peer that stops
//! reading holds its outbound budget plus a constant, not 32 messages of any size.

use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{AggregatedMessageStream, ProtocolError};
use bytes::Bytes;
use socket2::SockRef;
use tokio::sync::Notify;

use super::config::OriginPolicy;
use super::guard;
use crate::config::Config;
use crate::server::{listen_on, tune, StartError};

/// Bytes of frames the writer may have in actix-ws's channel before it waits for the
/// connection to take them.
pub const WINDOW: usize = 16 * 1024;

/// How big a message may be and which pages may connect: everything an upgrade checks.
#[derive(Debug, Clone)]
pub struct WsTransport {
    max_message: usize,
    origins: OriginPolicy,
}

/// An accepted upgrade: return `response` from the handler, write with `session`, read
/// `messages`.
pub struct Upgraded {
    /// The `101 Switching Protocols` response; the connection is a WebSocket once it is sent.
    pub response: HttpResponse,
    /// The sending half.
    pub session: actix_ws::Session,
    /// The received messages, fragments joined, at most `max_message` bytes each.
    pub messages: AggregatedMessageStream,
    flow: Arc<Flow>,
}

impl Upgraded {
    /// The signal of what the connection has taken from actix-ws's channel.
    pub(crate) fn flow(&self) -> Arc<Flow> {
        self.flow.clone()
    }
}

impl WsTransport {
    /// A transport that accepts messages of up to `max_message` bytes from pages of
    /// `allowed_origins` (see [`WsConfig::allowed_origins`](super::WsConfig::allowed_origins)).
    pub fn new(max_message: usize, allowed_origins: &[String]) -> Self {
        WsTransport {
            max_message,
            origins: OriginPolicy::new(allowed_origins),
        }
    }

    /// The largest message accepted.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Upgrades `req` to a WebSocket. `Err` is the response to send instead: `403` before any
    /// upgrade for a page whose origin is not allowed, `400` for a request that is not a valid
    /// WebSocket handshake.
    pub async fn upgrade(
        &self,
        req: &HttpRequest,
        body: web::Payload,
    ) -> Result<Upgraded, HttpResponse> {
        if !self.origins.allows(req) {
            tracing::info!(
                origin = ?req.headers().get(actix_web::http::header::ORIGIN),
                peer = ?req.peer_addr(),
                "WebSocket refused: origin not allowed"
            );
            return Err(HttpResponse::Forbidden()
                .content_type("text/plain; charset=utf-8")
                .body("origin not allowed\n"));
        }
        let body = guard::guarded(req, body, self.max_message)
            .await
            .map_err(HttpResponse::from_error)?;
        let (response, session, messages) =
            actix_ws::handle(req, body).map_err(HttpResponse::from_error)?;
        let flow = Arc::new(Flow::default());
        let signal = flow.clone();
        let response = response
            .map_body(|_, body| {
                BoxBody::new(Tracked {
                    inner: body,
                    flow: signal,
                })
            })
            .map_into_boxed_body();
        let messages = messages
            .max_frame_size(self.max_message)
            .aggregate_continuations()
            .max_continuation_size(self.max_message);
        Ok(Upgraded {
            response,
            session,
            messages,
            flow,
        })
    }
}

/// Whether a read error means that a message passed the limit: the parser's, the continuation
/// limit (actix-ws tells it only by its text) or the frame guard's.
pub fn is_too_large(error: &ProtocolError) -> bool {
    match error {
        ProtocolError::Overflow => true,
        ProtocolError::Io(e) => guard::is_overflow(e) || e.to_string() == CONTINUATION_TOO_BIG,
        _ => false,
    }
}

/// actix-ws's text for a message whose fragments pass its continuation limit.
const CONTINUATION_TOO_BIG: &str = "Exceeded maximum continuation size";

/// What the writer has put into actix-ws's channel since the connection last took from it.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    in_channel: AtomicUsize,
    drained: Notify,
}

impl Flow {
    /// Waits until the channel holds less than [`WINDOW`] bytes of frames.
    pub(crate) async fn room(&self) {
        while self.in_channel.load(Ordering::Acquire) >= WINDOW {
            self.drained.notified().await;
        }
    }

    /// Counts `len` bytes handed to the channel.
    pub(crate) fn sent(&self, len: usize) {
        self.in_channel.fetch_add(len, Ordering::AcqRel);
    }
}

/// The response body, telling the writer whenever the connection took everything from the
/// channel: actix-ws's body drains its whole channel on every poll, and the HTTP dispatcher
/// polls it only while its write buffer has room.
struct Tracked {
    inner: BoxBody,
    flow: Arc<Flow>,
}

impl MessageBody for Tracked {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.inner).poll_next(cx);
        if this.flow.in_channel.swap(0, Ordering::AcqRel) > 0 {
            this.flow.drained.notify_one();
        }
        next
    }
}

/// Runs an actix-web server on `config.ws.listen` (already bound as `listener`) for the
/// routes `routes` adds, with the settings every WebSocket listener of heartwire uses:
/// `workers` threads, the handshake timeout for the request head and the TLS handshake, TLS
/// from `config.tls`, the heartbeat-derived socket options, the close linger, no signal
/// handling. The caller runs (awaits or spawns) the returned server.
pub fn serve<F>(
    listener: TcpListener,
    config: &Config,
    routes: F,
) -> Result<actix_web::dev::Server, StartError>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let failed = |source| StartError::Ws { addr, source };
    // Accepted sockets inherit these from the listener.
    tune(SockRef::from(&listener), &config.keepalive()).map_err(failed)?;
    let server = HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(config.worker_count())
        .max_connections(config.limits.max_connections)
        .client_request_timeout(config.handshake_timeout)
        .client_disconnect_timeout(config.ws.close_linger)
        .disable_signals()
        .shutdown_timeout(config.close_timeout.as_secs() + 1);
    #[cfg(feature = "tls")]
    let server = match config.tls.server_config()? {
        Some(tls) => server
            .tls_handshake_timeout(config.handshake_timeout)
            .listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    };
    #[cfg(not(feature = "tls"))]
    let server = {
        // A configured certificate in a build without TLS is an error, never plain text.
        if let Some(never) = config.tls.acceptor()? {
            match never {}
        }
        server.listen(listener)
    };
    Ok(server.map_err(failed)?.run())
}

/// Binds the WebSocket listener on `addr` with the server's backlog (and `SO_REUSEPORT`
/// with `reuse_port`).
pub fn bind(addr: SocketAddr, config: &Config) -> Result<TcpListener, StartError> {
    listen_on(addr, config).map_err(|source| StartError::Ws { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_writer_waits_for_the_connection_past_the_window() {
        let flow = Arc::new(Flow::default());
        flow.room().await;
        flow.sent(WINDOW - 1);
        flow.room().await;
        flow.sent(1);
        let waiting = tokio::spawn({
            let flow = flow.clone();
            async move { flow.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a full window must wait");
        // What the response body does when the connection took the channel's contents.
        let mut body = Tracked {
            inner: BoxBody::new(()),
            flow: flow.clone(),
        };
        let waker = futures_util::task::noop_waker();
        let _ = Pin::new(&mut body).poll_next(&mut Context::from_waker(&waker));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken when drained")
            .unwrap();
    }
}
