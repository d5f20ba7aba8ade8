//! Integration tests over real sockets: servers on port 0 in this process (or the `heartwire`
//! binary as a child process), raw protocol clients and the client library. One test crate, so
//! that the suite links once; `tests/churn.rs` measures memory and has a process of its own.

mod broker_suite;
mod common;
mod dead_peers;

#[cfg(feature = "cli")]
mod bench_smoke;
#[cfg(feature = "ws")]
mod browser;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "client")]
mod client_backpressure;
#[cfg(feature = "cli")]
mod client_cli;
#[cfg(feature = "client")]
mod client_exactly_once;
#[cfg(feature = "client")]
mod client_heartbeat;
#[cfg(feature = "client")]
mod client_reconnect;
#[cfg(feature = "client")]
mod client_recover;
#[cfg(feature = "client")]
mod client_request;
#[cfg(feature = "client")]
mod client_support;
#[cfg(all(feature = "redis", feature = "cli"))]
mod cluster;
#[cfg(feature = "http")]
mod embedding;
mod extension;
mod frame_sizes;
mod framing;
mod handshake;
mod hooks;
mod hostile;
#[cfg(feature = "http")]
mod http_api;
#[cfg(feature = "http")]
mod http_security;
mod names;
mod presence;
mod robustness;
mod rooms;
#[cfg(all(feature = "tls", feature = "jwt", feature = "client"))]
mod security;
mod shutdown;
mod supervision;
#[cfg(feature = "ws")]
mod ws;
