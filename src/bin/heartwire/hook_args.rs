//! The `heartwire serve` flags of the HTTP hooks, flattened into
//! [`ServeArgs`](crate::serve_args::ServeArgs). Each is also read from its `HEARTWIRE_*`
//! variable; the shared secret is best given that way, since flags show in process listings,
//! and it never appears in `--help` or in debug output.

use std::fmt;
use std::time::Duration;

use clap::Args;

use heartwire::hooks::{FailurePolicy, HooksConfig};

use crate::serve_args::{duration, overlay, overlay_some};

/// Hook options of `heartwire serve`.
#[derive(Clone, Default, Args)]
pub struct HookArgs {
    /// Turn on every hook: POST JSON to URL/connect, URL/subscribe, URL/publish and URL/send
    /// (http:// only) and follow the JSON answers (docs/hooks.md).
    #[arg(long, env = "HEARTWIRE_HOOK_URL", value_name = "URL")]
    pub hook_url: Option<String>,
    /// URL of the connect hook (after hello, before welcome); overrides --hook-url for it.
    #[arg(long, env = "HEARTWIRE_HOOK_CONNECT_URL", value_name = "URL")]
    pub hook_connect_url: Option<String>,
    /// URL of the subscribe hook; overrides --hook-url for it.
    #[arg(long, env = "HEARTWIRE_HOOK_SUBSCRIBE_URL", value_name = "URL")]
    pub hook_subscribe_url: Option<String>,
    /// URL of the publish hook; overrides --hook-url for it.
    #[arg(long, env = "HEARTWIRE_HOOK_PUBLISH_URL", value_name = "URL")]
    pub hook_publish_url: Option<String>,
    /// URL of the send hook; overrides --hook-url for it.
    #[arg(long, env = "HEARTWIRE_HOOK_SEND_URL", value_name = "URL")]
    pub hook_send_url: Option<String>,
    /// Sent as `X-Heartwire-Secret` with every hook request (prefer HEARTWIRE_HOOK_SECRET:
    /// flags show in process listings).
    #[arg(
        long,
        env = "HEARTWIRE_HOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub hook_secret: Option<String>,
    /// Longest wait for one hook answer, including the wait for a free request slot
    /// [default: 1s].
    #[arg(long, env = "HEARTWIRE_HOOK_TIMEOUT", value_name = "DUR", value_parser = duration)]
    pub hook_timeout: Option<Duration>,
    /// The answer when a hook times out or fails: deny or allow [default: deny].
    #[arg(long, env = "HEARTWIRE_HOOK_ON_FAILURE", value_name = "POLICY", value_parser = FailurePolicy::parse)]
    pub hook_on_failure: Option<FailurePolicy>,
    /// Hook requests in flight at once; more wait their turn [default: 64].
    #[arg(long, env = "HEARTWIRE_HOOK_MAX_IN_FLIGHT", value_name = "N")]
    pub hook_max_in_flight: Option<usize>,
}

impl fmt::Debug for HookArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookArgs")
            .field("hook_url", &self.hook_url)
            .field("hook_connect_url", &self.hook_connect_url)
            .field("hook_subscribe_url", &self.hook_subscribe_url)
            .field("hook_publish_url", &self.hook_publish_url)
            .field("hook_send_url", &self.hook_send_url)
            .field(
                "hook_secret",
                &self.hook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("hook_timeout", &self.hook_timeout)
            .field("hook_on_failure", &self.hook_on_failure)
            .field("hook_max_in_flight", &self.hook_max_in_flight)
            .finish()
    }
}

impl HookArgs {
    /// Lays the given options over `config`.
    pub fn apply(&self, config: &mut HooksConfig) {
        let urls = [
            (&self.hook_url, &mut config.url),
            (&self.hook_connect_url, &mut config.connect_url),
            (&self.hook_subscribe_url, &mut config.subscribe_url),
            (&self.hook_publish_url, &mut config.publish_url),
            (&self.hook_send_url, &mut config.send_url),
        ];
        for (flag, key) in urls {
            overlay_some(key, flag);
        }
        overlay_some(&mut config.secret, &self.hook_secret);
        overlay(&mut config.timeout, &self.hook_timeout);
        overlay(&mut config.on_failure, &self.hook_on_failure);
        overlay(&mut config.max_in_flight, &self.hook_max_in_flight);
    }
}
