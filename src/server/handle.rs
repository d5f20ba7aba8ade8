//! What an application does with a running server, as plain async methods on
//! [`ServerHandle`]: push to rooms and users, disconnect, and look at rooms, presence and
//! connections. The HTTP API is a thin layer over these same methods, so an application that
//! embeds heartwire gets exactly what the API offers without building registry messages.
//!
//! Every method checks its arguments with the server's [`NameLimits`] (the same rules TCP
//! frames meet) and goes through the registry's mailbox with an awaited `send`, so a busy
//! registry slows the caller down instead of growing a queue.
//!
//! [`ServerHandle::shutdown`] is the graceful path: stop accepting, `bye{reason:"shutdown"}`
//! to every session with a jittered `reconnect_ms`, and wait until all are gone or the drain
//! timeout passes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Addr, MailboxError};
use actix_rt::Arbiter;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, HistoryTotals};
use crate::metrics::{Levels, Metrics};
use crate::names::{NameError, NameLimits, UserName, MAX_ID_LEN};
use crate::protocol::{message_len, ByeReason};
use crate::registry::admin::{
    ConnectionPage, GetHistoryTotals, GetOverview, KickSession, ListConnections, ListRooms,
    Overview, RoomDetails, RoomInfo, RoomPage,
};
use crate::registry::presence::Presence;
use crate::registry::{Drain, Kick, Publish, Registry, SendTo};
use crate::session::SessionShared;

/// Why an application call on a [`ServerHandle`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A name breaks the server's limits.
    #[error("invalid {0}")]
    Invalid(#[from] NameError),
    /// The `message` would be longer than the `max_frame` the server announces.
    #[error("the message would be {len} bytes, over max_frame ({max})")]
    TooLarge {
        /// Its length, without the newline.
        len: usize,
        /// The server's `max_frame`.
        max: usize,
    },
    /// The payload could not be turned into JSON.
    #[error("cannot encode `data` as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// The registry did not answer (it is stopping, or its mailbox is closed).
    #[error("registry unavailable: {0}")]
    Registry(#[from] MailboxError),
    /// The broker (sequencing and history) failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Which sessions [`ServerHandle::connections`] lists.
#[derive(Debug, Clone, Default)]
pub struct ConnectionQuery {
    /// Start after this cursor (a previous page's `next`).
    pub after: Option<u64>,
    /// Page size (the HTTP API caps it at `http.max_page_size`).
    pub limit: usize,
    /// Only this user's sessions.
    pub user: Option<String>,
}

impl ServerHandle {
    /// Publishes `data` to `room` as the server (`from: null`), exactly like a client's
    /// `publish`: sequenced, kept in the history, deduplicated by `id` (ids of server pushes
    /// form their own namespace). Returns the message's `seq` (for a duplicate, the first one).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        room: &str,
        data: &T,
        id: Option<&str>,
    ) -> Result<u64, HandleError> {
        let data = serde_json::value::to_raw_value(data)?;
        self.publish_raw(room, data, id).await
    }

    /// [`publish`](Self::publish) with a payload that is JSON text already.
    pub async fn publish_raw(
        &self,
        room: &str,
        data: Box<RawValue>,
        id: Option<&str>,
    ) -> Result<u64, HandleError> {
        let room = self.names.room(room)?;
        let id = self.names.opt_id(id)?;
        self.fits(message_len(Some(&room), None, &data, id.as_deref()))?;
        let msg = Publish {
            session: None,
            room,
            from: None,
            data,
            id,
        };
        Ok(self.registry().send(msg).await??)
    }

    /// Sends `data` to every session of `user` as a direct `message` with `from: null`.
    /// Returns how many sessions took it.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
        id: Option<&str>,
    ) -> Result<usize, HandleError> {
        let data = serde_json::value::to_raw_value(data)?;
        self.send_raw(user, data, id).await
    }

    /// [`send_to`](Self::send_to) with a payload that is JSON text already.
    pub async fn send_raw(
        &self,
        user: &str,
        data: Box<RawValue>,
        id: Option<&str>,
    ) -> Result<usize, HandleError> {
        let to = UserName::new(user).map_err(|e| e.for_field("to"))?;
        let id = self.names.opt_id(id)?;
        self.fits(message_len(None, None, &data, id.as_deref()))?;
        let msg = SendTo {
            session: None,
            from: None,
            to,
            data,
            id,
        };
        Ok(self.registry().send(msg).await??)
    }

    /// Refuses a message nobody could be sent (see [`HandleError::TooLarge`]).
    fn fits(&self, message_len: usize) -> Result<(), HandleError> {
        let max = self.shared.config.max_frame;
        if message_len > max + 1 {
            return Err(HandleError::TooLarge {
                len: message_len - 1,
                max,
            });
        }
        Ok(())
    }

    /// Closes every session of `user` with `bye{reason:"kicked"}`; returns how many.
    pub async fn kick_user(&self, user: &str) -> Result<usize, HandleError> {
        let msg = Kick {
            user: UserName::new(user)?,
            reason: ByeReason::Kicked,
        };
        Ok(self.registry().send(msg).await??)
    }

    /// Closes the session its client knows as `session` (`welcome.session`) with
    /// `bye{reason:"kicked"}`; returns 1, or 0 when there is no such session.
    pub async fn kick_session(&self, session: &str) -> Result<usize, HandleError> {
        if session.is_empty() || session.len() > MAX_ID_LEN {
            // Not an id this server hands out.
            return Ok(0);
        }
        let msg = KickSession {
            session: session.to_owned(),
            reason: ByeReason::Kicked,
        };
        Ok(self.registry().send(msg).await?)
    }

    /// Counts and whether the server is draining.
    pub async fn overview(&self) -> Result<Overview, HandleError> {
        Ok(self.registry().send(GetOverview).await?)
    }

    /// The users present in `room` (at least one session subscribed), sorted.
    pub async fn presence(&self, room: &str) -> Result<Vec<UserName>, HandleError> {
        let msg = Presence {
            room: self.names.room(room)?,
        };
        Ok(self.registry().send(msg).await??)
    }

    /// A page of the rooms that have subscribers, by name, after `after`.
    pub async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<RoomPage, HandleError> {
        let msg = ListRooms {
            after: after.map(Into::into),
            limit,
        };
        Ok(self.registry().send(msg).await?)
    }

    /// One room: members, users, and the broker's `seq`, `epoch` and history length; `None`
    /// when it has no subscribers and no history.
    pub async fn room(&self, room: &str) -> Result<Option<RoomDetails>, HandleError> {
        let msg = RoomInfo {
            room: self.names.room(room)?,
        };
        Ok(self.registry().send(msg).await??)
    }

    /// A page of connections with their heartbeat numbers and queues.
    pub async fn connections(&self, query: ConnectionQuery) -> Result<ConnectionPage, HandleError> {
        let msg = ListConnections {
            after: query.after,
            limit: query.limit,
            user: query.user,
        };
        Ok(self.registry().send(msg).await?)
    }

    /// What the room histories hold together; `None` when the broker cannot tell.
    pub async fn history_totals(&self) -> Result<Option<HistoryTotals>, HandleError> {
        Ok(self.registry().send(GetHistoryTotals).await??)
    }

    /// The metrics in OpenMetrics text (`application/openmetrics-text`), after
    /// reading the current levels (connections, rooms, history) from the registry and broker.
    pub async fn render_metrics(&self) -> Result<String, HandleError> {
        let overview = self.overview().await?;
        let history = match self.registry().send(GetHistoryTotals).await? {
            Ok(totals) => totals.map(|t| (t.rooms, t.messages)),
            Err(error) => {
                tracing::warn!(%error, "broker totals unavailable for metrics");
                None
            }
        };
        self.metrics.set_levels(&Levels {
            connections: overview.sessions,
            identified: overview.identified,
            users: overview.users,
            rooms: overview.rooms,
            draining: overview.draining,
            store_up: overview.store_healthy,
            history,
        });
        Ok(self.metrics.encode())
    }
}

/// A running server: its address, its registry, and the way to stop it. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop_accepting: CancellationToken,
    drain_timeout: Duration,
    shutdown_reconnect: Duration,
    names: NameLimits,
    shared: Arc<SessionShared>,
    arbiters: Arc<Mutex<Vec<Arbiter>>>,
    metrics: Arc<Metrics>,
}

/// The server gave up: its registry crashed more often than `max_registry_restarts` allows.
#[derive(Debug, Clone, thiserror::Error)]
#[error("server failed: {0}")]
pub struct ServerFailed(pub Arc<str>);

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every connection closed within `drain_timeout`.
    Drained,
    /// `drain_timeout` passed first; the rest were closed.
    TimedOut,
    /// A second signal ended the wait.
    Interrupted,
}

/// How often a shutdown checks whether the last connection has closed.
const CLOSED_POLL: Duration = Duration::from_millis(10);

impl ServerHandle {
    pub(super) fn new(
        local_addr: SocketAddr,
        stop_accepting: CancellationToken,
        shared: Arc<SessionShared>,
        arbiters: Vec<Arbiter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let config = &shared.config;
        ServerHandle {
            local_addr,
            stop_accepting,
            drain_timeout: config.drain_timeout,
            shutdown_reconnect: config.shutdown_reconnect,
            names: config.limits.names(),
            shared,
            arbiters: Arc::new(Mutex::new(arbiters)),
            metrics,
        }
    }

    /// The address the listener is bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry running now, to send it the application's own messages (`impl
    /// Handler<M> for Registry`); for publishing, sending, kicking and queries use the methods
    /// above. After a registry crash this is the fresh one.
    pub fn registry(&self) -> Addr<Registry> {
        self.shared.slot.current()
    }

    /// What the server's sessions share, to start more of them (other transports, tests).
    pub(crate) fn shared(&self) -> &Arc<SessionShared> {
        &self.shared
    }

    /// The server's name rules (room, user and id lengths).
    pub fn names(&self) -> &NameLimits {
        &self.names
    }

    /// Connections open now (sessions, including those flushing their last frames).
    pub fn open_connections(&self) -> usize {
        self.shared.tracker.open()
    }

    /// Resolves when the server has given up (its registry crashed more often than
    /// `max_registry_restarts` within `registry_restart_window`). The process should then
    /// exit with an error; sessions were already told `bye{reason:"shutdown"}`.
    pub async fn failed(&self) -> ServerFailed {
        ServerFailed(self.shared.slot.failed().await)
    }

    /// Waits for SIGINT or SIGTERM, then shuts down gracefully ([`shutdown`](Self::shutdown));
    /// a second signal during the drain stops waiting for it. Returns how the shutdown went,
    /// or the failure when the server gave up first. This is the whole life of a server
    /// embedded in an application that owns no signals of its own (an actix-web app built
    /// with `.disable_signals()`): run it, then stop the app.
    ///
    /// The signal handlers are installed when this is called, before the returned future is
    /// first polled: call it before announcing that the server is up.
    pub fn run_until_signal(
        &self,
    ) -> impl std::future::Future<Output = Result<Shutdown, ServerFailed>> + '_ {
        let signals = Signals::new();
        async move {
            let mut signals = signals
                .map_err(|e| ServerFailed(format!("cannot install signal handlers: {e}").into()))?;
            self.until_signal_then_shutdown(&mut signals).await
        }
    }

    async fn until_signal_then_shutdown(
        &self,
        signals: &mut Signals,
    ) -> Result<Shutdown, ServerFailed> {
        tokio::select! {
            () = signals.next() => {}
            failed = self.failed() => {
                self.stop_arbiters_after_flush().await;
                return Err(failed);
            }
        }
        tracing::info!("shutting down; a second signal stops waiting for the drain");
        tokio::select! {
            drained = self.shutdown() => Ok(if drained { Shutdown::Drained } else { Shutdown::TimedOut }),
            () = signals.next() => {
                tracing::warn!("second signal: not waiting for the drain");
                self.stop_arbiters();
                Ok(Shutdown::Interrupted)
            }
        }
    }

    /// Graceful shutdown: stops accepting, sends every session `bye{reason:"shutdown"}` (with
    /// a jittered `reconnect_ms`) after what was queued for it, and waits until every
    /// connection has closed or `drain_timeout` passes. Returns `true` when every connection
    /// closed in time. The worker and registry arbiters are stopped afterwards.
    pub async fn shutdown(&self) -> bool {
        self.stop_accepting.cancel();
        let drain = async {
            let drain = self.registry().send(Drain {
                reconnect_ms: self.shutdown_reconnect.as_millis() as u64,
            });
            // Sessions leave the registry as soon as their close begins; the flush of their
            // queued frames and `bye` is over when their connection is.
            if drain.await.is_ok() {
                self.connections_closed().await;
            }
        };
        let drained = tokio::time::timeout(self.drain_timeout, drain)
            .await
            .is_ok();
        if !drained {
            tracing::warn!(timeout = ?self.drain_timeout, open = self.shared.tracker.open(),
                "drain timed out; closing the rest");
        }
        self.stop_arbiters();
        drained
    }

    async fn connections_closed(&self) {
        while self.shared.tracker.open() > 0 {
            tokio::time::sleep(CLOSED_POLL).await;
        }
    }

    /// After a failure: lets the sessions' `bye` go out (within `drain_timeout`), then stops.
    async fn stop_arbiters_after_flush(&self) {
        self.stop_accepting.cancel();
        let _ = tokio::time::timeout(self.drain_timeout, self.connections_closed()).await;
        self.stop_arbiters();
    }

    fn stop_arbiters(&self) {
        self.shared.slot.stop();
        let arbiters =
            std::mem::take(&mut *self.arbiters.lock().unwrap_or_else(|p| p.into_inner()));
        for arbiter in arbiters {
            arbiter.stop();
        }
    }
}

/// SIGINT and SIGTERM as one stream of "please stop".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
