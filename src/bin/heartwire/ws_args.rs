//! The `heartwire serve` flags of the WebSocket listener, flattened into
//! [`ServeArgs`](crate::serve_args::ServeArgs). Each is also read from its `HEARTWIRE_*`
//! variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use heartwire::ws::WsConfig;

use crate::serve_args::{duration, overlay, overlay_some};

/// WebSocket options of `heartwire serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct WsArgs {
    /// Serve WebSocket connections at /ws (and the browser page at /) on this address; off
    /// when not given.
    #[arg(long = "ws", env = "HEARTWIRE_WS", value_name = "ADDR")]
    pub ws: Option<SocketAddr>,
    /// Origins whose pages may connect, comma-separated (`https://chat.example.com`), or `*`
    /// [default: pages of the host the request is addressed to].
    #[arg(
        long,
        env = "HEARTWIRE_WS_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub ws_allowed_origins: Option<Vec<String>>,
    /// Time a closed WebSocket connection keeps reading before its socket closes [default: 1s].
    #[arg(long, env = "HEARTWIRE_WS_CLOSE_LINGER", value_name = "DUR", value_parser = duration)]
    pub ws_close_linger: Option<Duration>,
}

impl WsArgs {
    /// Lays the given options over `config`.
    pub fn apply(&self, config: &mut WsConfig) {
        overlay_some(&mut config.listen, &self.ws);
        overlay(&mut config.allowed_origins, &self.ws_allowed_origins);
        overlay(&mut config.close_linger, &self.ws_close_linger);
    }
}
