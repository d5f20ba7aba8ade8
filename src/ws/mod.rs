//! The WebSocket transport: protocol v1 over RFC 6455 at `/ws`, for browsers and anything else
//! that cannot open a raw TCP socket (feature `ws`).
//!
//! A WebSocket connection is served by the same [`Session`] actor as a TCP connection: this
//! module only turns the connection into what a session reads (a stream of frames) and where
//! it writes (a sink for its outbox), see `adapter.rs`. Everything else (handshake, heartbeat,
//! limits, rooms, the outbound budget) is the session's, unchanged. The listener is actix-web
//! with actix-ws in the same actix `System` as the server; its set-up is in [`transport`],
//! shared with the Autobahn echo server in `examples/ws_echo.rs`.
//!
//! The listener also serves the browser chat page at `/` and the JavaScript client at
//! `/heartwire.js`, both compiled into the binary, so a browser needs nothing but the address.
//!
//! Like the HTTP API, it runs beside a server: [`WsService::start`] after
//! [`ServerBuilder::start`](crate::ServerBuilder::start), [`WsService::stop`] after
//! [`ServerHandle::shutdown`] (whose drain already closed every WebSocket session with
//! `bye{reason:"shutdown"}`).

mod adapter;
mod config;
mod guard;
pub mod transport;

pub use config::WsConfig;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use self::adapter::{close_reason, incoming, WsSink};
use self::transport::{Upgraded, WsTransport};
use crate::config::Config;
use crate::limits::Refusal;
use crate::metrics::Limit;
use crate::protocol::{ByeReason, Outbound};
use crate::server::{ServerHandle, StartError};
use crate::session::{Session, SessionShared};

/// The browser chat page served at `/`.
const INDEX_HTML: &str = include_str!("../../web/index.html");
/// The JavaScript client served at `/heartwire.js`.
const CLIENT_JS: &str = include_str!("../../clients/js/heartwire.js");

/// What the `/ws` handler needs.
struct WsState {
    shared: Arc<SessionShared>,
    transport: WsTransport,
}

/// The WebSocket listener of a server (`ws.listen`).
#[derive(Clone)]
pub struct WsService {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl WsService {
    /// Starts the WebSocket listener of `server` on `config.ws.listen` in the current actix
    /// `System`; `None` when no address is configured. It handles no signals: stop it with
    /// [`WsService::stop`] after the server's drain.
    pub fn start(server: &ServerHandle, config: &Config) -> Result<Option<WsService>, StartError> {
        let Some(configured) = config.ws.listen else {
            return Ok(None);
        };
        let listener = transport::bind(configured, config)?;
        let addr = listener.local_addr().map_err(|source| StartError::Ws {
            addr: configured,
            source,
        })?;
        let state = web::Data::new(WsState {
            shared: server.shared().clone(),
            // One byte more than a frame: a message may end in a `\n` that does not count.
            transport: WsTransport::new(config.max_frame + 1, &config.ws.allowed_origins),
        });
        let ws = transport::serve(listener, config, move |cfg| routes(cfg, state.clone()))?;
        let handle = ws.handle();
        actix_rt::spawn(async move {
            if let Err(error) = ws.await {
                tracing::error!(%error, "WebSocket server failed");
            }
        });
        tracing::info!(%addr, tls = config.tls.cert.is_some(), "WebSocket listening");
        Ok(Some(WsService { addr, handle }))
    }

    /// The address the listener is bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener; connections still open are closed within `close_timeout`.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

fn routes(cfg: &mut web::ServiceConfig, state: web::Data<WsState>) {
    cfg.app_data(state)
        .route("/ws", web::get().to(ws_route))
        .route("/", web::get().to(index))
        .route("/heartwire.js", web::get().to(client_js))
        .default_service(web::to(not_found));
}

/// Upgrades a request to a WebSocket and starts its session, or turns it away.
async fn ws_route(req: HttpRequest, body: web::Payload, state: web::Data<WsState>) -> HttpResponse {
    let Some(peer) = req.peer_addr() else {
        return HttpResponse::BadRequest().finish();
    };
    let upgraded = match state.transport.upgrade(&req, body).await {
        Ok(upgraded) => upgraded,
        Err(refused) => return refused,
    };
    let shared = &state.shared;
    shared.metrics.accepted();
    let permit = match shared.tracker.admit(peer.ip()) {
        Ok(permit) => permit,
        Err(refusal) => return refuse(upgraded, refusal, shared, peer),
    };
    let max_frame = shared.config.max_frame;
    let sink = WsSink::new(upgraded.session.clone(), upgraded.flow());
    let frames = incoming(upgraded.messages, upgraded.session, max_frame);
    Session::start_on(frames, sink, peer, shared.clone(), Some(permit));
    upgraded.response
}

/// Turns a connection over a limit away as TCP does: `bye` with a jittered `reconnect_ms`
/// (a browser learns nothing from a failed upgrade, but reads this), then the close frame.
fn refuse(
    upgraded: Upgraded,
    refusal: Refusal,
    shared: &SessionShared,
    peer: SocketAddr,
) -> HttpResponse {
    let (reason, limit) = match refusal {
        Refusal::ServerFull => (ByeReason::ServerFull, Limit::MaxConnections),
        Refusal::IpLimit => (ByeReason::TooManyConnections, Limit::MaxConnectionsPerIp),
    };
    shared.metrics.limit_hit(limit);
    tracing::warn!(%peer, %reason, "WebSocket connection refused");
    let base = shared.config.shutdown_reconnect.as_millis() as u64;
    let bye = Outbound::Bye {
        reason,
        reconnect_ms: Some(base + fastrand::u64(0..=base)),
    }
    .encode();
    let mut session = upgraded.session;
    let close_timeout = shared.config.close_timeout;
    actix_rt::spawn(async move {
        let text = String::from_utf8_lossy(bye.trim_ascii_end()).into_owned();
        let bye_then_close = async move {
            if session.text(text).await.is_ok() {
                let _ = session.close(Some(close_reason(reason))).await;
            }
        };
        let _ = tokio::time::timeout(close_timeout, bye_then_close).await;
    });
    upgraded.response
}

async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn client_js() -> HttpResponse {
    page("text/javascript; charset=utf-8", CLIENT_JS)
}

fn page(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body("not found; the WebSocket endpoint is /ws\n")
}
