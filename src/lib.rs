//! heartwire: long-lived TCP connections that stay healthy.
//!
//! A chat/push server and library built on actix actors. Every connection is a
//! [`Session`] actor with its own heartbeat; a supervised [`Registry`] actor tracks users and
//! rooms and fans messages out; a [`Broker`] sequences room messages and keeps the history
//! that lets clients recover after a reconnect. The wire protocol (newline-delimited JSON)
//! is described in `PROTOCOL.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), heartwire::StartError> {
//! let server = heartwire::ServerBuilder::new(heartwire::Config::default()).start()?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod gauge;
pub mod handle;
pub mod handler;
pub mod heartbeat;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod session;
pub mod tls;

pub use broker::{Broker, MemoryBroker};
pub use config::Config;
pub use handle::{ConnectionQuery, HandleError};
pub use handler::{AppFrame, FrameHandler};
pub use http::HttpApi;
pub use metrics::Metrics;
pub use protocol::{ByeReason, ErrorCode};
pub use registry::{Registry, SessionId};
pub use server::{ServerBuilder, ServerHandle, StartError};
pub use session::Session;
