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

use actix_rt::Arbiter;
use tokio_util::sync::CancellationToken;

use self::accept::AcceptLoop;
use crate::auth::Authenticator;
use crate::broker::{Broker, HistoryLimits, MemoryBroker};
use crate::config::{Config, ConfigError};
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::outbox::Worker;
use crate::registry::keeper::{self, BuildRegistry, Intensity};
use crate::registry::{Registry, RegistryLimits};
use crate::session::{FrameHandler, Handlers, SessionShared};

/// Builds the broker inside the registry's arbiter (brokers need not be `Send`).
type BrokerFactory = Box<dyn FnOnce(&Config) -> Rc<dyn Broker> + Send>;

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
        let registry_arbiter = Arbiter::new();
        let make_broker = self.broker.unwrap_or_else(|| {
            Box::new(|config: &Config| {
                Rc::new(MemoryBroker::new(HistoryLimits {
                    size: config.history_size,
                    ttl: config.history_ttl,
                })) as Rc<dyn Broker>
            })
        });
        let broker_config = config.clone();
        let registry_config = config.clone();
        let registry_metrics = metrics.clone();
        let build: Box<dyn FnOnce() -> BuildRegistry + Send> = Box::new(move || {
            Box::new(move |broker, death| {
                Registry::new(broker, registry_config.sweep_interval, death)
                    .with_limits(RegistryLimits {
                        max_sessions_per_user: registry_config.limits.max_sessions_per_user,
                        max_rooms_per_session: registry_config.limits.max_rooms_per_session,
                    })
                    .with_metrics(registry_metrics.clone())
                    .with_presence_events(registry_config.presence_events.clone())
            })
        });
        let intensity = Intensity {
            max_restarts: config.max_registry_restarts,
            window: config.registry_restart_window,
        };
        let slot = keeper::start(
            &registry_arbiter.handle(),
            Box::new(move || make_broker(&broker_config)),
            build,
            intensity,
            metrics.clone(),
        )
        .ok_or(StartError::Registry)?;

        let workers: Vec<Arbiter> = (0..config.worker_count()).map(|_| Arbiter::new()).collect();
        let shared = SessionShared::new(
            config.clone(),
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
        tracing::info!(%local_addr, workers = workers.len(), tls = config.tls.cert.is_some(), "listening");

        Ok(ServerHandle::new(
            local_addr,
            stop_accepting,
            shared,
            workers.into_iter().chain([registry_arbiter]).collect(),
            metrics,
        ))
    }
}
