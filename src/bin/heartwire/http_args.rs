//! The `heartwire serve` flags of the HTTP API, flattened into
//! [`ServeArgs`](crate::serve_args::ServeArgs). Each is also read from its `HEARTWIRE_*` variable; the
//! API key is best given that way, since flags show in process listings.

use std::fmt;
use std::net::SocketAddr;

use clap::Args;

use heartwire::http::HttpConfig;

/// HTTP API options of `heartwire serve`.
#[derive(Clone, Default, Args)]
pub struct HttpArgs {
    /// Serve the HTTP API (push, monitoring, /metrics) on this address; off when not given.
    #[arg(long = "http", env = "HEARTWIRE_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Require `Authorization: Bearer KEY` on /api/* (prefer HEARTWIRE_API_KEY: flags show in
    /// process listings).
    #[arg(
        long,
        env = "HEARTWIRE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Serve the HTTP API without an API key on a non-loopback address.
    #[arg(long, env = "HEARTWIRE_HTTP_ALLOW_INSECURE")]
    pub http_allow_insecure: bool,
}

impl fmt::Debug for HttpArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpArgs")
            .field("http", &self.http)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("http_allow_insecure", &self.http_allow_insecure)
            .finish()
    }
}

impl HttpArgs {
    /// Lays the given options over `config`.
    pub fn apply(&self, config: &mut HttpConfig) {
        if let Some(addr) = self.http {
            config.listen = Some(addr);
        }
        if let Some(key) = &self.api_key {
            config.api_key = Some(key.clone());
        }
        if self.http_allow_insecure {
            config.allow_insecure = true;
        }
    }
}
