//! Starting a server: [`ServerBuilder::start`] validates the configuration, binds the
//! listener, starts the supervised registry on its own arbiter, the worker arbiters that
//! sessions live on, and the accept loop ([`accept`]). What an application then does with the
//! running server, up to its graceful shutdown, is [`ServerHandle`] ([`handle`]).

mod accept;
mod handle;

#[cfg(feature = "ws")]
pub(crate) use accept::{listen_on, tune};

pub use handle::{ConnectionQuery, HandleError, ServerFailed, ServerHandle, Shutdown};

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_rt::Arbiter;
use futures_util::future::ready;
use tokio_util::sync::CancellationToken;

use self::accept::AcceptLoop;
use crate::auth::Authenticator;
use crate::broker::{Broker, HistoryLimits, MemoryBroker};
use crate::config::{Config, ConfigError};
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::outbox::Worker;
use crate::registry::keeper::{self, BuildRegistry, Intensity, MakeBroker, StartFailure};
use crate::registry::{Registry, RegistryLimits};
use crate::session::{FrameHandler, Handlers, SessionShared};

/// Builds the broker inside the registry's arbiter (brokers need not be `Send`).
type BrokerFactory = Box<dyn FnOnce(&Config) -> Rc<dyn Broker> + Send>;

/// Longest wait for the registry (and its broker) to start, unless the store's timeouts
/// need longer.
const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// The id this process gives itself in the cluster: the configured node name (if any) and a
/// random part per start, so that session ids stay unique across nodes and restarts.
fn node_id(config: &Config) -> String {
    let nonce = format!("{:06x}", fastrand::u32(..0x100_0000));
    match &config.broker.node {
        Some(name) => format!("{name}.{nonce}"),
        None => nonce,
    }
}

/// The broker `config` asks for: Redis when `broker.url` is set, else in memory.
fn default_broker(config: &Config, node: String, metrics: Arc<Metrics>) -> MakeBroker {
    let limits = HistoryLimits {
        size: config.history_size,
        ttl: config.history_ttl,
    };
    #[cfg(feature = "redis")]
    if config.broker.url.is_some() {
        let broker_config = config.broker.clone();
        return Box::new(move || {
            Box::pin(async move {
                let broker =
                    crate::broker::RedisBroker::connect(&broker_config, limits, node, metrics)
                        .await
                        .map_err(|e| e.to_string())?;
                Ok(Rc::new(broker) as Rc<dyn Broker>)
            })
        });
    }
    let _ = (node, metrics);
    Box::new(move || {
        Box::pin(ready(Ok(
            Rc::new(MemoryBroker::new(limits)) as Rc<dyn Broker>
        )))
    })
}

/// Configures and starts a server. Call [`ServerBuilder::start`] inside a running actix
/// `System` (for example under `#[actix_rt::main]` or in an actix-web app).
pub struct ServerBuilder {
    config: Config,
    handlers: Handlers,
    broker: Option<BrokerFactory>,
    /// Set by the hook methods (`hooks/mod.rs`).
    pub(crate) hooks: Hooks,
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The registry did not start.
    #[error("the registry did not start")]
    Registry,
    /// The shared store (`broker.url`) could not be reached or used, and `broker.start_degraded`
    /// is off.
    #[error("cannot use the message store at {url}: {reason}")]
    Broker {
        /// The store's URL, password redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP API could not be set up.
    #[cfg(feature = "http")]
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The configured address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The WebSocket listener could not be set up.
    #[cfg(feature = "ws")]
    #[error("cannot serve WebSocket on {addr}: {source}")]
    Ws {
        /// The configured address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
}

impl ServerBuilder {
    /// A builder with `config` and no application handlers.
    pub fn new(config: Config) -> Self {
        let mut handlers = Handlers::default();
        crate::registry::presence::install(&mut handlers);
        ServerBuilder {
            config,
            handlers,
            broker: None,
            hooks: Hooks::default(),
        }
    }

    /// Routes frames of `kind` (a type protocol v1 does not define) to `handler`.
    pub fn frame_handler(mut self, kind: impl Into<String>, handler: impl FrameHandler) -> Self {
        self.handlers.insert(kind, handler);
        self
    }

    /// Replaces the embedded [`MemoryBroker`]; `make` runs on the registry's arbiter.
    pub fn broker<B, F>(mut self, make: F) -> Self
    where
        B: Broker,
        F: FnOnce(&Config) -> B + Send + 'static,
    {
        self.broker = Some(Box::new(move |config| {
            Rc::new(make(config)) as Rc<dyn Broker>
        }));
        self
    }

    /// Validates the configuration, binds the listener and starts the registry, the
    /// workers and the accept loop.
    pub fn start(self) -> Result<ServerHandle, StartError> {
        let config = self.config;
        config.validate()?;
        let authenticator = Authenticator::from_config(&config.auth)?;
        if authenticator.is_none() {
            tracing::warn!(
                "no authentication configured (auth.jwt_secret or auth.jwt_public_key): \
                 clients are trusted to be the user they claim in hello"
            );
        }
        let tls = config.tls.acceptor()?;
        let hooks = self.hooks.with_http(&config)?;
        let listener = accept::bind(&config).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;

        let metrics = Arc::new(Metrics::new());
        let node = node_id(&config);
        let registry_arbiter = Arbiter::new();
        let make_broker: MakeBroker = match self.broker {
            Some(make) => {
                let config = config.clone();
                Box::new(move || {
                    let broker = make(&config);
                    Box::pin(ready(Ok(broker)))
                })
            }
            None => default_broker(&config, node.clone(), metrics.clone()),
        };
        let registry_config = config.clone();
        let registry_metrics = metrics.clone();
        let build: Box<dyn FnOnce() -> BuildRegistry + Send> = Box::new(move || {
            Box::new(move |broker, death| {
                Registry::new(
                    broker,
                    registry_config.sweep_interval,
                    registry_config.dead_after(),
                    death,
                )
                .with_limits(RegistryLimits {
                    max_sessions_per_user: registry_config.limits.max_sessions_per_user,
                    max_rooms_per_session: registry_config.limits.max_rooms_per_session,
                    max_frame: registry_config.max_frame,
                })
                .with_metrics(registry_metrics.clone())
                .with_presence_events(registry_config.presence_events.clone())
            })
        });
        let intensity = Intensity {
            max_restarts: config.max_registry_restarts,
            window: config.registry_restart_window,
        };
        // Connecting to a store takes a few of its command timeouts at most.
        let wait = STARTUP_WAIT + config.broker.command_timeout * 6;
        let slot = keeper::start(
            &registry_arbiter.handle(),
            make_broker,
            build,
            intensity,
            metrics.clone(),
            wait,
        )
        .map_err(|failure| {
            registry_arbiter.stop();
            match failure {
                StartFailure::Registry => StartError::Registry,
                StartFailure::Broker(reason) => StartError::Broker {
                    url: config.broker.redacted_url().unwrap_or_default(),
                    reason,
                },
            }
        })?;

        let workers: Vec<Arbiter> = (0..config.worker_count()).map(|_| Arbiter::new()).collect();
        let shared = SessionShared::new(
            config.clone(),
            node.clone(),
            slot.clone(),
            self.handlers,
            authenticator,
            hooks,
            metrics.clone(),
        );
        let stop_accepting = CancellationToken::new();
        let accept = AcceptLoop {
            listener,
            shared: shared.clone(),
            tls,
            tracker: shared.tracker.clone(),
            accept_rate: config.limits.accept_rate_limiter(),
            workers: workers.iter().map(|a| Worker::new(a.handle())).collect(),
            keepalive: config.keepalive(),
            stop: stop_accepting.clone(),
        };
        actix_rt::spawn(accept.run());
        tracing::info!(%local_addr, workers = workers.len(), tls = config.tls.cert.is_some(),
            node, broker = config.broker.redacted_url().as_deref().unwrap_or("memory"), "listening");

        Ok(ServerHandle::new(
            local_addr,
            stop_accepting,
            shared,
            workers.into_iter().chain([registry_arbiter]).collect(),
            metrics,
        ))
    }
}
