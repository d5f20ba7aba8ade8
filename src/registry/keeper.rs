//! Keeping a registry alive: a crash-only registry and the slot where everyone finds it.
//!
//! `actix::Supervisor` restarts an actor that stops itself, never one that panics: a panic in
//! any registry handler (a built-in one or an application's `impl Handler<M> for Registry`)
//! drops the actor, its mailbox closes, and without more every session would ask a dead
//! address forever. So the registry runs under a supervisor *and* a keeper, a task on the
//! registry's arbiter that:
//!
//! 1. owns the [`Broker`], so a room's `seq`, `epoch`, history and dedupe outlive any one
//!    registry;
//! 2. starts a registry, publishes its address in the [`RegistrySlot`], and waits for it to
//!    die (its `Drop` hands over the sessions it knew, and the keeper also polls
//!    `Addr::connected` in case that never comes);
//! 3. logs the panic's message at `error`, counts it, and starts a fresh registry at once;
//!    the sessions it knew are told to re-register ([`RegistryRestarted`]), and every other
//!    session notices the new generation of the slot at its next heartbeat tick or request.
//!    A session it knew whose actor is gone too ended around the crash, its goodbye perhaps
//!    lost in the dead registry's mailbox: the fresh registry gets that goodbye on its
//!    behalf, and releases what it held (its claim, its presence).
//!    A session re-registers with what it owns: its user, its rooms and the last `seq` it
//!    was given in each ([`RoomCursor`]), so the registry replays what it missed from history
//!    or, where history no longer reaches back, sends `unsubscribed{reason:"resync"}`;
//! 4. gives up when the registry crashes `max_registry_restarts` times within
//!    `registry_restart_window` (OTP's restart intensity): the slot records the failure,
//!    sessions are closed with `bye{reason:"shutdown"}`, and [`ServerHandle::failed`]
//!    resolves so that the process can exit non-zero instead of spinning.
//!
//! [`ServerHandle::failed`]: crate::ServerHandle::failed
//! [`RoomCursor`]: super::RoomCursor

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakAddr;
use futures_util::future::LocalBoxFuture;
use tokio::sync::{oneshot, watch};

use super::{Disconnect, Registry};
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::panics;
use crate::session::Session;

/// How often the keeper checks that the registry's mailbox is still open, in case its `Drop`
/// notice never comes.
const LIVENESS_POLL: Duration = Duration::from_millis(200);

/// How long after a restart the sessions told to register again have before the goodbyes of
/// those that ended around the crash are released.
const REJOIN_HEAD_START: Duration = Duration::from_millis(200);

/// The sessions a registry knew, handed over when it is dropped.
pub(crate) type Orphans = Vec<Orphan>;

/// A session the dead registry knew: where to tell it to register again, and, if its actor is
/// gone too, the goodbye the fresh registry releases what it held with (its own may have died
/// in the dead registry's mailbox).
pub(crate) struct Orphan {
    pub(crate) addr: WeakAddr<Session>,
    pub(crate) goodbye: Disconnect,
}

/// Where sessions, the accept loop and the application find the registry running now.
#[derive(Debug)]
pub(crate) struct RegistrySlot {
    current: RwLock<Addr<Registry>>,
    /// Counts registries started; a session that registered with an older one re-registers.
    generation: AtomicU64,
    /// Set when the server shuts down: a registry that goes away then is not replaced.
    stopping: AtomicBool,
    /// Why the keeper gave up, once it has.
    failure: watch::Sender<Option<Arc<str>>>,
    /// Whether `failure` is set: a plain load for the sessions that check on every frame
    /// and tick (the watch takes a lock that both workers would bounce between them).
    failed: AtomicBool,
}

impl RegistrySlot {
    fn new(first: Addr<Registry>) -> Arc<Self> {
        Arc::new(RegistrySlot {
            current: RwLock::new(first),
            generation: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            failure: watch::Sender::new(None),
            failed: AtomicBool::new(false),
        })
    }

    /// The registry running now (or the last one, while a new one starts).
    pub(crate) fn current(&self) -> Addr<Registry> {
        match self.current.read() {
            Ok(addr) => addr.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The generation of [`current`](Self::current).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` with the registry running now if it is still generation `generation`, the
    /// one a session registered with; `None` once it was replaced. Borrowed: no address clone
    /// per request.
    pub(crate) fn with_current<R>(
        &self,
        generation: u64,
        f: impl FnOnce(&Addr<Registry>) -> R,
    ) -> Option<R> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The generation moves under the write lock, so it belongs to this address.
        (self.generation() == generation).then(|| f(&current))
    }

    fn publish(&self, addr: Addr<Registry>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = addr;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The server is shutting down: registries that end now are not replaced.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether the keeper gave up.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Resolves with the reason once the keeper gives up.
    pub(crate) async fn failed(&self) -> Arc<str> {
        let mut rx = self.failure.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The slot is being dropped with the server: nothing can fail any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// OTP's restart intensity: at most `max_restarts` within `window`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Intensity {
    pub(crate) max_restarts: u32,
    pub(crate) window: Duration,
}

/// Builds one registry; called again for every restart, on the registry's arbiter.
pub(crate) type BuildRegistry = Box<dyn Fn(Rc<dyn Broker>, oneshot::Sender<Orphans>) -> Registry>;

/// Tells a session that the registry it registered with is gone and a new one runs.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RegistryRestarted;

/// Tells a session that no registry will run again: the server gave up.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RegistryGone;

/// Builds the broker on the registry's arbiter (brokers need not be `Send`); a store that
/// cannot be reached is an error, which stops the server from starting.
pub(crate) type MakeBroker =
    Box<dyn FnOnce() -> LocalBoxFuture<'static, Result<Rc<dyn Broker>, String>> + Send>;

/// Why the keeper did not start.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// The arbiter is gone or did not answer in time.
    Registry,
    /// The broker could not be built (its store cannot be reached).
    Broker(String),
}

/// Starts the keeper on `arbiter` and returns the slot once the first registry runs, waiting
/// at most `wait` for the broker and the registry. `make_broker` and `build` run on the
/// arbiter, so neither the broker nor the registry need be `Send`.
pub(crate) fn start(
    arbiter: &actix_rt::ArbiterHandle,
    make_broker: MakeBroker,
    build: Box<dyn FnOnce() -> BuildRegistry + Send>,
    intensity: Intensity,
    metrics: Arc<Metrics>,
    wait: Duration,
) -> Result<Arc<RegistrySlot>, StartFailure> {
    panics::capture();
    let (slot_tx, slot_rx) = std::sync::mpsc::sync_channel(1);
    let spawned = arbiter.spawn_fn(move || {
        actix_rt::spawn(async move {
            let broker = match make_broker().await {
                Ok(broker) => broker,
                Err(error) => {
                    let _ = slot_tx.send(Err(StartFailure::Broker(error)));
                    return;
                }
            };
            let keeper = Keeper {
                broker,
                build: build(),
                intensity,
                metrics,
                restarts: VecDeque::new(),
            };
            keeper.run(slot_tx).await;
        });
    });
    if !spawned {
        return Err(StartFailure::Registry);
    }
    // The registry arbiter only builds a broker (connecting to its store, bounded by the
    // store's own timeouts) and a registry: this is a short wait.
    slot_rx
        .recv_timeout(wait)
        .unwrap_or(Err(StartFailure::Registry))
}

struct Keeper {
    broker: Rc<dyn Broker>,
    build: BuildRegistry,
    intensity: Intensity,
    metrics: Arc<Metrics>,
    restarts: VecDeque<Instant>,
}

impl Keeper {
    fn start_registry(&self) -> (Addr<Registry>, oneshot::Receiver<Orphans>) {
        let (notice, died) = oneshot::channel();
        let registry = (self.build)(self.broker.clone(), notice);
        (Supervisor::start(move |_| registry), died)
    }

    async fn run(
        mut self,
        slot_tx: std::sync::mpsc::SyncSender<Result<Arc<RegistrySlot>, StartFailure>>,
    ) {
        let (mut addr, mut died) = self.start_registry();
        let slot = RegistrySlot::new(addr.clone());
        if slot_tx.send(Ok(slot.clone())).is_err() {
            return;
        }
        loop {
            let orphans = tokio::select! {
                orphans = &mut died => orphans.unwrap_or_default(),
                () = until_disconnected(&addr) => Vec::new(),
            };
            if slot.stopping.load(Ordering::Acquire) {
                return;
            }
            let message = panics::take().unwrap_or_else(|| "no panic message recorded".into());
            self.metrics.registry_restarted();
            let now = Instant::now();
            self.restarts.push_back(now);
            while self
                .restarts
                .front()
                .is_some_and(|at| now.duration_since(*at) > self.intensity.window)
            {
                self.restarts.pop_front();
            }
            if self.restarts.len() > self.intensity.max_restarts as usize {
                let reason: Arc<str> = format!(
                    "the registry crashed {} times within {:?} (max_registry_restarts); \
                     last panic: {message}",
                    self.restarts.len(),
                    self.intensity.window
                )
                .into();
                tracing::error!(%reason, "giving up: the server stops");
                for addr in orphans.iter().filter_map(|o| o.addr.upgrade()) {
                    addr.do_send(RegistryGone);
                }
                slot.failure.send_replace(Some(reason));
                slot.failed.store(true, Ordering::Release);
                return;
            }
            tracing::error!(panic = %message, sessions = orphans.len(),
                "registry crashed; a fresh one takes over and sessions re-register");
            (addr, died) = self.start_registry();
            slot.publish(addr.clone());
            let mut goodbyes = Vec::new();
            for orphan in orphans {
                // One message per session per restart, and restarts are bounded.
                if let Some(addr) = orphan.addr.upgrade().filter(Addr::connected) {
                    addr.do_send(RegistryRestarted);
                } else {
                    goodbyes.push(orphan.goodbye);
                }
            }
            if !goodbyes.is_empty() {
                // The live sessions register first, so that those in a gone session's rooms
                // hear it leave.
                let fresh = addr.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(REJOIN_HEAD_START).await;
                    for goodbye in goodbyes {
                        fresh.do_send(goodbye);
                    }
                });
            }
        }
    }
}

/// Resolves when `addr`'s mailbox has closed.
async fn until_disconnected(addr: &Addr<Registry>) {
    while addr.connected() {
        tokio::time::sleep(LIVENESS_POLL).await;
    }
}
