//! heartwire: long-lived TCP connections that stay healthy.
//!
//! A chat/push server and library built on actix actors. Every connection is a [`Session`]
//! actor with its own heartbeat; a supervised [`Registry`] actor tracks users and rooms and
//! fans messages out; a [`Broker`](broker::Broker) sequences room messages and keeps the
//! history that lets clients recover after a reconnect. The wire protocol (newline-delimited
//! JSON over TCP, or one frame per WebSocket text message) is described in `docs/PROTOCOL.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), heartwire::StartError> {
//! let server = heartwire::ServerBuilder::new(heartwire::Config::default()).start()?;
//! println!("listening on {}", server.local_addr());
//! server.publish("lobby", &"hello", None).await.ok();
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | what lives there |
//! |---|---|
//! | [`ServerBuilder`], [`ServerHandle`] | starting a server, and everything an application does with a running one |
//! | [`Config`] | every setting, validated; sub-configs per subsystem |
//! | [`Session`], [`FrameHandler`], [`AppFrame`] | the per-connection actor and the extension point for new frame types |
//! | [`hooks`] | the application decides who connects, subscribes, publishes and sends (in code, or over HTTP with `hooks-http`) |
//! | [`Registry`] | the actor that tracks users and rooms and fans out; applications may add `Handler<M> for Registry` |
//! | [`broker`] | the seam where a room's sequence, history, dedupe and presence live ([`MemoryBroker`]; `RedisBroker` with feature `redis`, for several nodes) |
//! | [`names`] | room, user and id names, validated once against the configured limits |
//! | [`protocol`] | the frame types a handler sends ([`ErrorCode`], [`ByeReason`], [`encode_line`](protocol::encode_line)) |
//! | `http` (feature `http`) | the HTTP API, standalone or mounted in an actix-web app |
//! | `ws` (feature `ws`) | the WebSocket transport: the same sessions at `/ws`, the browser page and the JavaScript client |
//! | `client` (feature `client`) | the supervised client actor |
//!
//! # Cargo features
//!
//! `default = ["cli"]` builds the `heartwire` binary and everything it can switch on. An
//! application embedding only the server takes `default-features = false` and adds what it
//! needs: `http` (actix-web HTTP API), `ws` (WebSocket listener, actix-ws), `tls` (rustls),
//! `jwt` (token authentication), `client` (the client actor), `hooks-http` (hooks that call
//! the application's backend over HTTP, with actix's `awc` client), `redis` (several nodes
//! sharing rooms through Redis: `broker.url`).
#![deny(missing_docs)]

mod auth;
pub mod broker;
#[cfg(feature = "client")]
pub mod client;
mod config;
pub mod hooks;
#[cfg(feature = "http")]
pub mod http;
mod limits;
mod metrics;
pub mod names;
mod outbox;
mod panics;
pub mod protocol;
mod registry;
mod server;
mod session;
mod small_set;
#[doc(hidden)]
pub mod testing;
mod tls;
#[cfg(feature = "ws")]
pub mod ws;

#[cfg(feature = "jwt")]
pub use auth::{mint_claims, mint_token, Claims};
pub use auth::{AuthConfig, SendPolicy};
pub use broker::{BrokerConfig, MemoryBroker};
pub use config::{Config, ConfigError, TcpConfig};
pub use limits::LimitsConfig;
pub use names::{FrameId, NameError, RoomName, UserName};
pub use protocol::{ByeReason, ErrorCode};
pub use registry::admin::{ConnectionInfo, ConnectionPage, Overview, RoomDetails, RoomPage};
pub use registry::{Registry, SessionId};
pub use server::{
    ConnectionQuery, HandleError, ServerBuilder, ServerFailed, ServerHandle, Shutdown, StartError,
};
pub use session::{AppFrame, FrameHandler, Session};
pub use tls::TlsConfig;
