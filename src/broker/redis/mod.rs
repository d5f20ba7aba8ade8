//! [`RedisBroker`]: several heartwire nodes sharing rooms, users, presence and history through
//! one Redis (feature `redis`; enabled by `broker.url`).
//!
//! What lives where:
//!
//! - **A room's stream** (epoch, last seq, bounded history, publish-id dedupe) lives in Redis,
//!   and one Lua script per publish makes it atomic: dedupe → epoch → seq → history entry →
//!   `PUBLISH` of the encoded `message` frame with the seq spliced in. Redis runs scripts one
//!   at a time, so every node receives a room's messages in seq order, the publishing node
//!   included (it fans out what comes back, like every other node). History and epochs outlive
//!   every node; they outlive Redis only with Redis persistence (AOF or RDB).
//! - **Presence** is a sorted set of sessions with expiry times per room plus per-user counts,
//!   maintained by scripts that publish `join`/`leave` on the room's channel exactly when a
//!   user's first session anywhere arrives or its last one leaves. Each node refreshes its own
//!   sessions every third of `broker.presence_ttl` and sweeps expired ones, so a node that
//!   dies silently has its users leave within the ttl (plus a third). A refresh reads the
//!   node's live map batch by batch and only extends entries the store still has: it never
//!   brings back a session released while the round was under way.
//! - **The user index** (for `max_sessions_per_user` and for `ack.delivered` across nodes) is a
//!   sorted set of each user's sessions, refreshed the same way. A limit is exact among live
//!   nodes; the sessions of a node that died count until they expire.
//! - **A registry crash** ends the refresh of everything the node held: its sessions claim
//!   and join again as they register with the new registry, and what belonged to sessions
//!   that ended around the crash expires within the ttl.
//! - **Direct messages and kicks** go on a per-user channel, which a node subscribes to while it
//!   holds a session of that user; closing one session by id goes to its node's channel.
//!
//! Commands share one multiplexed [`ConnectionManager`] with a short retry budget; the
//! subscriptions have a dedicated connection ([`pubsub`]). Every call is bounded by
//! `broker.command_timeout`; a call that fails or times out is `unavailable` (nothing was
//! done, or, for a timed-out publish, it may have been: the resend with the same id is then
//! recognised as a duplicate). After an I/O failure the broker fails calls at once until a
//! `PING` succeeds again, so that sessions are not held up by a store that is down.
//!
//! Everything runs on the registry's arbiter: one thread, so the state is in `Rc`/`RefCell`.

mod keys;
mod pubsub;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, LocalBoxStream};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{
    Client, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult, Script, ScriptInvocation,
};
use tokio::sync::{mpsc, oneshot};

use self::keys::Keys;
use self::pubsub::{Connection, Subscriptions, Target, Wanted};
use super::{
    Broker, BrokerConfig, BrokerError, BrokerEvent, BrokerFuture, History, HistoryLimits,
    PublishRequest, Published, RoomStream,
};
use crate::metrics::{Metrics, StoreOp};
use crate::names::{RoomName, UserName};
use crate::protocol::{message_around_seq, ByeReason};

/// Events that may wait for the registry; past this the broker drops them and has the
/// registry check every room once it catches up.
const EVENT_QUEUE: usize = 16 * 1024;
/// The registry caught up when this much of its queue is free again.
const CAUGHT_UP: usize = EVENT_QUEUE / 4;
/// Store calls of one upkeep round in flight at once.
const UPKEEP_CONCURRENCY: usize = 32;
/// Sessions per presence or user-index refresh call.
const REFRESH_BATCH: usize = 256;
/// Presence removals that failed (store down) and are retried by the upkeep; beyond this they
/// are left to expire.
const MAX_PENDING_REMOVALS: usize = 100_000;
/// How often a store that failed is pinged to see whether it is back.
const HEALTH_RETRY: Duration = Duration::from_millis(100);
/// A room's position (epoch, last seq) outlives its last publish or read at least this long,
/// so that clients resuming a quiet room are not told of a false gap.
const MIN_META_TTL: Duration = Duration::from_secs(24 * 3600);
/// Oldest Redis with `XADD … MAXLEN =` and `XTRIM MINID`.
const MIN_REDIS: (u32, u32) = (6, 2);

/// The scripts, loaded by Redis on first use (and again after a restart).
struct Scripts {
    publish: Script,
    history: Script,
    presence_add: Script,
    presence_refresh: Script,
    presence_remove: Script,
    presence_users: Script,
    claim: Script,
    claim_refresh: Script,
    to_user: Script,
    restart: Script,
}

impl Scripts {
    fn all(&self) -> [&Script; 10] {
        [
            &self.publish,
            &self.history,
            &self.presence_add,
            &self.presence_refresh,
            &self.presence_remove,
            &self.presence_users,
            &self.claim,
            &self.claim_refresh,
            &self.to_user,
            &self.restart,
        ]
    }

    fn new() -> Self {
        Scripts {
            publish: Script::new(include_str!("lua/publish.lua")),
            history: Script::new(include_str!("lua/history.lua")),
            presence_add: Script::new(concat!(
                include_str!("lua/presence_lib.lua"),
                include_str!("lua/presence_add.lua")
            )),
            presence_refresh: Script::new(concat!(
                include_str!("lua/presence_lib.lua"),
                include_str!("lua/presence_refresh.lua")
            )),
            presence_remove: Script::new(concat!(
                include_str!("lua/presence_lib.lua"),
                include_str!("lua/presence_remove.lua")
            )),
            presence_users: Script::new(concat!(
                include_str!("lua/presence_lib.lua"),
                include_str!("lua/presence_users.lua")
            )),
            claim: Script::new(include_str!("lua/claim.lua")),
            claim_refresh: Script::new(include_str!("lua/claim_refresh.lua")),
            to_user: Script::new(include_str!("lua/to_user.lua")),
            restart: Script::new(include_str!("lua/restart.lua")),
        }
    }
}

/// The settings the broker works with, resolved once.
#[derive(Debug, Clone)]
struct Settings {
    /// This node's id in the cluster (the prefix of its session ids).
    node: String,
    presence_ttl: Duration,
    probe_interval: Duration,
    command_timeout: Duration,
    history: HistoryLimits,
}

impl Settings {
    fn history_ttl_ms(&self) -> u64 {
        (self.history.ttl.as_millis() as u64).max(1)
    }

    /// Publish ids are recognised for as long as history is kept (at least a second): a
    /// client's resend after an outage up to that long is not sequenced twice.
    fn dedupe_ttl_ms(&self) -> u64 {
        self.history_ttl_ms().max(1000)
    }

    fn meta_ttl_secs(&self) -> u64 {
        self.history.ttl.max(MIN_META_TTL).as_secs()
    }

    fn presence_ttl_ms(&self) -> u64 {
        self.presence_ttl.as_millis() as u64
    }
}

/// What the broker and its tasks share.
struct Shared {
    settings: Settings,
    keys: Keys,
    client: Client,
    commands: ConnectionManager,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// A call failed for lack of the store; calls fail at once until a `PING` succeeds.
    store_down: Cell<bool>,
    subs: Subscriptions,
    events: RefCell<Option<mpsc::Sender<BrokerEvent>>>,
    /// Events were dropped since the registry's queue was last found full.
    lagging: Cell<bool>,
    /// This node's sessions in each room: refreshed in the store by the upkeep.
    presence: RefCell<HashMap<RoomName, HashMap<String, UserName>>>,
    /// Presence removals the store did not take.
    pending_removals: RefCell<Vec<(RoomName, String)>>,
    /// This node's sessions of each user: refreshed in the user index by the upkeep.
    claims: RefCell<HashMap<UserName, HashSet<String>>>,
}

/// The Redis broker (see the module docs). Built by the server when `broker.url` is set.
pub struct RedisBroker {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.shared.settings.node)
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

/// Whether an error means the store could not be reached (rather than refused the command).
fn is_outage(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Io
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
    ) || error.is_timeout()
        || error.is_connection_dropped()
}

impl RedisBroker {
    /// Connects to the store `config` names and starts the node's subscription connection
    /// and upkeep on the current arbiter (the registry's). Without `start_degraded`, fails
    /// when the store cannot be reached or is too old.
    pub(crate) async fn connect(
        config: &BrokerConfig,
        history: HistoryLimits,
        node: String,
        metrics: Arc<Metrics>,
    ) -> Result<RedisBroker, BrokerError> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| BrokerError::Failed("no broker.url".into()))?;
        let settings = Settings {
            node,
            presence_ttl: config.presence_ttl,
            probe_interval: config.probe_interval,
            command_timeout: config.command_timeout,
            history,
        };
        let info = url
            .into_connection_info()
            .map_err(|e| BrokerError::Failed(format!("broker.url: {e}")))?
            .set_tcp_settings(
                TcpSettings::default()
                    .set_nodelay(true)
                    .set_keepalive(
                        TcpKeepalive::new()
                            .with_time(Duration::from_secs(10))
                            .with_interval(Duration::from_secs(5)),
                    )
                    .set_user_timeout(Duration::from_secs(10).max(config.command_timeout * 3)),
            );
        let client = match &config.tls_ca {
            None => Client::open(info),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    BrokerError::Failed(format!("broker.tls_ca {}: {e}", path.display()))
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| BrokerError::Failed(e.to_string()))?;
        // A short retry budget: a call while the store is down fails within about one
        // command timeout instead of waiting through a long backoff.
        let manager = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let (commands, first) = if config.start_degraded {
            let commands = ConnectionManager::new_lazy_with_config(client.clone(), manager)
                .map_err(unavailable)?;
            (commands, None)
        } else {
            let connect = ConnectionManager::new_with_config(client.clone(), manager);
            let mut commands = tokio::time::timeout(config.command_timeout * 2, connect)
                .await
                .map_err(|_| unavailable("timed out connecting"))?
                .map_err(unavailable)?;
            check_version(&mut commands, config.command_timeout).await?;
            (commands, Some(()))
        };
        let shared = Rc::new(Shared {
            keys: Keys::new(&config.key_prefix),
            client,
            commands,
            scripts: Scripts::new(),
            metrics,
            store_down: Cell::new(false),
            subs: Subscriptions::default(),
            events: RefCell::new(None),
            lagging: Cell::new(false),
            presence: RefCell::new(HashMap::new()),
            pending_removals: RefCell::new(Vec::new()),
            claims: RefCell::new(HashMap::new()),
            settings,
        });
        let own = shared.keys.node_channel(&shared.settings.node);
        // Probes and commands for this node; never unwanted.
        drop(shared.subs.want(own, Target::Node));
        let first = match first {
            Some(()) => {
                shared.load_scripts().await;
                let mut connection = shared.open_pubsub().await.map_err(unavailable)?;
                pubsub::reconcile(&shared, &mut connection.0)
                    .await
                    .map_err(unavailable)?;
                Some(connection)
            }
            None => {
                tracing::warn!("starting without the message store (broker.start_degraded)");
                None
            }
        };
        actix_rt::spawn(pubsub::supervise(shared.clone(), first));
        actix_rt::spawn(health(shared.clone()));
        actix_rt::spawn(upkeep(shared.clone()));
        tracing::info!(node = %shared.settings.node, "connected to the message store");
        Ok(RedisBroker { shared })
    }
}

/// Refuses a Redis that lacks what the scripts use.
async fn check_version(
    commands: &mut ConnectionManager,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let mut command = redis::cmd("INFO");
    command.arg("server");
    let info = tokio::time::timeout(timeout, command.query_async::<String>(commands))
        .await
        .map_err(|_| unavailable("INFO timed out"))?
        .map_err(unavailable)?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_REDIS {
        return Err(BrokerError::Failed(format!(
            "Redis {version} is too old: heartwire needs {}.{} or newer",
            MIN_REDIS.0, MIN_REDIS.1
        )));
    }
    Ok(())
}

impl Shared {
    /// Runs one store call within the command timeout, counting and classifying failures.
    async fn call<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        if self.store_down.get() {
            return Err(unavailable("the message store is unreachable"));
        }
        match tokio::time::timeout(self.settings.command_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                self.metrics.store_error(op);
                if is_outage(&error) {
                    self.went_down(&error);
                    Err(unavailable(error))
                } else {
                    tracing::error!(%error, ?op, "the message store refused a command");
                    Err(BrokerError::Failed(error.to_string()))
                }
            }
            Err(_) => {
                self.metrics.store_error(op);
                self.went_down(&"timed out");
                Err(unavailable("the message store did not answer in time"))
            }
        }
    }

    /// Runs a script on the command connection, through [`Shared::call`].
    async fn invoke<T: FromRedisValue>(
        &self,
        op: StoreOp,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        let mut commands = self.commands();
        self.call(op, invocation.invoke_async(&mut commands)).await
    }

    /// Runs a command on the command connection, through [`Shared::call`].
    async fn query<T: FromRedisValue>(
        &self,
        op: StoreOp,
        command: &redis::Cmd,
    ) -> Result<T, BrokerError> {
        let mut commands = self.commands();
        self.call(op, command.query_async(&mut commands)).await
    }

    /// `script` with `room`'s stream keys: its meta hash, then its history.
    fn room_script<'a>(&self, script: &'a Script, room: &RoomName) -> ScriptInvocation<'a> {
        let mut invocation = script.key(self.keys.meta(room));
        invocation.key(self.keys.history(room));
        invocation
    }

    /// `script` with the three keys of `room`'s presence.
    fn presence_script<'a>(&self, script: &'a Script, room: &RoomName) -> ScriptInvocation<'a> {
        let [pz, pm, pu] = self.keys.presence(room);
        let mut invocation = script.key(pz);
        invocation.key(pm).key(pu);
        invocation
    }

    fn went_down(&self, error: &dyn std::fmt::Display) {
        if !self.store_down.replace(true) {
            tracing::warn!(%error, "the message store is unreachable");
        }
    }

    fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    async fn open_pubsub(&self) -> Result<Connection, String> {
        let open = self.client.get_async_pubsub();
        match tokio::time::timeout(self.settings.command_timeout, open).await {
            Ok(Ok(pubsub)) => Ok(pubsub.split()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out connecting".into()),
        }
    }

    /// Queues an event for the registry, dropping it when the registry is too far behind.
    fn emit(&self, event: BrokerEvent) {
        let events = self.events.borrow();
        let Some(tx) = events.as_ref() else {
            return;
        };
        if self.lagging.get() {
            drop(events);
            self.catch_up();
            if self.lagging.get() {
                self.metrics.events_dropped(1);
                return;
            }
            return self.emit(event);
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
            tracing::warn!(
                "the registry is behind the message store; dropping events until it catches up"
            );
            self.lagging.set(true);
            self.metrics.events_dropped(1);
        }
    }

    /// After events were dropped: once the registry has room again and the node receives,
    /// tells it to check every room (`Interrupted`, `Resumed`).
    fn catch_up(&self) {
        if !self.lagging.get() || !self.subs.connected() {
            return;
        }
        let events = self.events.borrow();
        let Some(tx) = events.as_ref() else {
            return self.lagging.set(false);
        };
        if tx.capacity() >= CAUGHT_UP {
            let _ = tx.try_send(BrokerEvent::Interrupted);
            let _ = tx.try_send(BrokerEvent::Resumed);
            self.lagging.set(false);
            tracing::info!("the registry caught up; its rooms are checked for holes");
        }
    }

    /// Publishes a probe to this node's own channel, through the command connection; the
    /// answer is how many subscribers Redis handed it to.
    fn probe(&self) -> oneshot::Receiver<Result<i64, String>> {
        let (tx, rx) = oneshot::channel();
        let mut commands = self.commands();
        let channel = self.keys.node_channel(&self.settings.node);
        let timeout = self.settings.command_timeout;
        actix_rt::spawn(async move {
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(channel).arg("p");
            let answer =
                match tokio::time::timeout(timeout, publish.query_async(&mut commands)).await {
                    Ok(Ok(receivers)) => Ok(receivers),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                };
            let _ = tx.send(answer);
        });
        rx
    }

    async fn presence_add(
        &self,
        room: &RoomName,
        members: &[(String, UserName)],
    ) -> Result<(), BrokerError> {
        let mut invocation = self.presence_script(&self.scripts.presence_add, room);
        invocation
            .arg(self.settings.presence_ttl_ms())
            .arg(self.keys.room_channel(room));
        for (member, user) in members {
            invocation.arg(member).arg(user.as_str());
        }
        self.invoke::<i64>(StoreOp::Presence, &invocation)
            .await
            .map(drop)
    }

    async fn presence_remove(
        &self,
        room: &RoomName,
        members: &[String],
    ) -> Result<(), BrokerError> {
        let mut invocation = self.presence_script(&self.scripts.presence_remove, room);
        invocation.arg(self.keys.room_channel(room)).arg(members);
        self.invoke::<i64>(StoreOp::Presence, &invocation)
            .await
            .map(drop)
    }

    async fn claim(
        &self,
        user: &UserName,
        members: &[String],
        max: usize,
    ) -> Result<bool, BrokerError> {
        let mut invocation = self.scripts.claim.key(self.keys.sessions(user));
        invocation
            .arg(self.settings.presence_ttl_ms())
            .arg(max)
            .arg(members);
        self.invoke::<i64>(StoreOp::Sessions, &invocation)
            .await
            .map(|claimed| claimed == 1)
    }

    /// Refreshes `members` in `room`'s presence where the store still has them; returns the
    /// ones it does not.
    async fn presence_refresh(
        &self,
        room: &RoomName,
        members: &[(String, UserName)],
    ) -> Result<Vec<String>, BrokerError> {
        let [pz, pm, pu] = self.keys.presence(room);
        let mut invocation = self.scripts.presence_refresh.key(pz);
        invocation
            .key(pm)
            .key(pu)
            .arg(self.settings.presence_ttl_ms())
            .arg(self.keys.room_channel(room));
        for (member, _) in members {
            invocation.arg(member);
        }
        let mut commands = self.commands();
        self.call(
            StoreOp::Presence,
            invocation.invoke_async::<Vec<String>>(&mut commands),
        )
        .await
    }

    /// Refreshes `members` in `user`'s index where the store still has them; returns the
    /// ones it does not.
    async fn claim_refresh(
        &self,
        user: &UserName,
        members: &[String],
    ) -> Result<Vec<String>, BrokerError> {
        let mut invocation = self.scripts.claim_refresh.key(self.keys.sessions(user));
        invocation.arg(self.settings.presence_ttl_ms()).arg(members);
        let mut commands = self.commands();
        self.call(
            StoreOp::Sessions,
            invocation.invoke_async::<Vec<String>>(&mut commands),
        )
        .await
    }

    /// Publishes `payload` to the nodes holding sessions of `user`; returns how many of its
    /// sessions are registered on other nodes.
    async fn to_user(&self, user: &UserName, payload: Vec<u8>) -> Result<usize, BrokerError> {
        let mut invocation = self.scripts.to_user.key(self.keys.sessions(user));
        invocation
            .arg(self.keys.user_channel(user))
            .arg(format!("{}-", self.settings.node))
            .arg(payload);
        self.invoke(StoreOp::ToUser, &invocation).await
    }

    /// `<kind><node>:<body>`: a message other nodes can tell is not theirs.
    fn signed(&self, kind: u8, body: &[u8]) -> Vec<u8> {
        let node = self.settings.node.as_bytes();
        let mut payload = Vec::with_capacity(2 + node.len() + body.len());
        payload.push(kind);
        payload.extend_from_slice(node);
        payload.push(b':');
        payload.extend_from_slice(body);
        payload
    }
}

impl Shared {
    /// Pings the store through the command connection; a success clears the "store down"
    /// flag.
    async fn ping(&self) -> bool {
        let mut commands = self.commands();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut commands);
        match tokio::time::timeout(self.settings.command_timeout, ping).await {
            Ok(Ok(_)) => {
                if self.store_down.replace(false) {
                    tracing::info!("the message store answers again");
                }
                true
            }
            _ => {
                self.metrics.store_error(StoreOp::Ping);
                false
            }
        }
    }

    /// After the subscription came back: makes sure the command connection works too (its
    /// first command after a store restart fails on the dead socket), so that the reads the
    /// registry is about to make find a live connection, and the scripts are loaded.
    pub(super) async fn commands_ready(&self) {
        for _ in 0..3 {
            if self.ping().await {
                return self.load_scripts().await;
            }
            tokio::time::sleep(HEALTH_RETRY).await;
        }
    }

    /// Loads every script, so that the first calls after a (re)start do not each fail with
    /// `NOSCRIPT` and load it again. A failure only costs that.
    async fn load_scripts(&self) {
        for script in self.scripts.all() {
            let mut commands = self.commands();
            let invocation = script.prepare_invoke();
            let load = invocation.load_async(&mut commands);
            if tokio::time::timeout(self.settings.command_timeout, load)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Pings a store that failed until it answers again.
async fn health(shared: Rc<Shared>) {
    loop {
        tokio::time::sleep(HEALTH_RETRY).await;
        if shared.store_down.get() {
            shared.ping().await;
        }
    }
}

/// Every third of `presence_ttl`: refreshes this node's sessions in every room's presence
/// (sweeping expired ones, which announces their users' `leave`) and in the user index, and
/// retries presence removals the store did not take.
async fn upkeep(shared: Rc<Shared>) {
    let mut tick = tokio::time::interval(shared.settings.presence_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if shared.store_down.get() {
            continue;
        }
        let removals = std::mem::take(&mut *shared.pending_removals.borrow_mut());
        let rooms: Vec<RoomName> = shared.presence.borrow().keys().cloned().collect();
        let users: Vec<UserName> = shared.claims.borrow().keys().cloned().collect();
        let shared = &shared;
        stream::iter(removals)
            .for_each_concurrent(UPKEEP_CONCURRENCY, |(room, member)| async move {
                if shared
                    .presence_remove(&room, std::slice::from_ref(&member))
                    .await
                    .is_err()
                {
                    shared.remove_later(room, member);
                }
            })
            .await;
        stream::iter(rooms)
            .for_each_concurrent(UPKEEP_CONCURRENCY, |room| shared.refresh_room(room))
            .await;
        stream::iter(users)
            .for_each_concurrent(UPKEEP_CONCURRENCY, |user| shared.refresh_user(user))
            .await;
    }
}

/// Refreshes `members` of `key` in batches of [`REFRESH_BATCH`]: each batch is narrowed to
/// what the node still holds right before it is sent (`still_held`), `refresh` extends those
/// entries in the store and answers the ones the store had lost, and `restore` adds these
/// back, again only if the node still holds them. Failures are logged and the next batch
/// goes on.
async fn refresh_in_batches<T>(
    key: &dyn std::fmt::Display,
    what: &str,
    members: &[String],
    still_held: impl Fn(&[String]) -> Vec<T>,
    refresh: impl AsyncFn(&[T]) -> Result<Vec<String>, BrokerError>,
    restore: impl AsyncFn(&[T]) -> Result<(), BrokerError>,
) {
    for chunk in members.chunks(REFRESH_BATCH) {
        let batch = still_held(chunk);
        if batch.is_empty() {
            continue;
        }
        let lost = match refresh(&batch).await {
            Ok(missing) => still_held(&missing),
            Err(error) => {
                tracing::debug!(%key, %error, "{what} not refreshed");
                continue;
            }
        };
        if lost.is_empty() {
            continue;
        }
        if let Err(error) = restore(&lost).await {
            tracing::debug!(%key, %error, "{what} not restored");
        }
    }
}

/// The refresh of what the node holds. A round takes many round trips, and a session may be
/// released meanwhile: each batch is read from the node's live maps right before it is sent,
/// and the store only refreshes entries it still has, so a refresh never brings a released
/// session back. An entry the store lost (it expired while the node was cut off, or the store
/// restarted empty) is added again if the node still holds it.
impl Shared {
    async fn refresh_room(&self, room: RoomName) {
        let members: Vec<String> = self
            .presence
            .borrow()
            .get(&room)
            .map(|members| members.keys().cloned().collect())
            .unwrap_or_default();
        refresh_in_batches(
            &room,
            "presence",
            &members,
            |batch| self.present(&room, batch),
            async |held| self.presence_refresh(&room, held).await,
            async |lost| self.presence_add(&room, lost).await,
        )
        .await;
    }

    async fn refresh_user(&self, user: UserName) {
        let members: Vec<String> = self
            .claims
            .borrow()
            .get(&user)
            .map(|members| members.iter().cloned().collect())
            .unwrap_or_default();
        refresh_in_batches(
            &user,
            "user index",
            &members,
            |batch| self.held(&user, batch),
            async |held| self.claim_refresh(&user, held).await,
            async |lost| self.claim(&user, lost, 0).await.map(drop),
        )
        .await;
    }

    /// Which of `members` are this node's sessions in `room` now, with their users.
    fn present(&self, room: &RoomName, members: &[String]) -> Vec<(String, UserName)> {
        let presence = self.presence.borrow();
        let Some(here) = presence.get(room) else {
            return Vec::new();
        };
        members
            .iter()
            .filter_map(|m| here.get(m).map(|user| (m.clone(), user.clone())))
            .collect()
    }

    /// Which of `members` are this node's sessions of `user` now.
    fn held(&self, user: &UserName, members: &[String]) -> Vec<String> {
        let claims = self.claims.borrow();
        let Some(mine) = claims.get(user) else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|m| mine.contains(*m))
            .cloned()
            .collect()
    }

    fn hold_claim(&self, user: UserName, member: String) {
        self.claims
            .borrow_mut()
            .entry(user)
            .or_default()
            .insert(member);
    }
}

impl Shared {
    fn remove_later(&self, room: RoomName, member: String) {
        let mut pending = self.pending_removals.borrow_mut();
        if pending.len() < MAX_PENDING_REMOVALS {
            pending.push((room, member));
        }
    }
}

impl Broker for RedisBroker {
    fn events(&self) -> LocalBoxStream<'static, BrokerEvent> {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let replaced = self.shared.events.borrow_mut().replace(tx).is_some();
        self.shared.lagging.set(false);
        if replaced {
            // A registry that crashed is replaced: its rooms and users are wanted again, and
            // its members present and claimed again, only as its sessions register with the
            // new one (each with its cursor, so nothing is missed meanwhile). Sessions that do
            // not come back (they ended around the crash, their goodbye lost with the old
            // registry) leave presence and the user index when their entries expire.
            self.shared.subs.unwant_all_but_node();
            self.shared.presence.borrow_mut().clear();
            self.shared.claims.borrow_mut().clear();
        }
        stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed_local()
    }

    fn publish(&self, request: PublishRequest) -> BrokerFuture<Published> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let PublishRequest {
                room,
                from,
                data,
                id,
            } = request;
            let (head, tail) = message_around_seq(&room, from.as_deref(), &data, id.as_deref());
            let keys = &shared.keys;
            let settings = &shared.settings;
            let mut invocation = shared.room_script(&shared.scripts.publish, &room);
            if let Some(id) = &id {
                invocation.key(keys.dedupe(&room, from.as_ref(), id));
            }
            invocation
                .arg(keys.room_channel(&room))
                .arg(&head[..])
                .arg(&tail[..])
                .arg(settings.history.size)
                .arg(settings.history_ttl_ms())
                .arg(settings.meta_ttl_secs())
                .arg(new_epoch())
                .arg(settings.dedupe_ttl_ms());
            let (seq, epoch, duplicate): (u64, String, u8) =
                shared.invoke(StoreOp::Publish, &invocation).await?;
            Ok(Published {
                seq,
                epoch: epoch.into(),
                duplicate: duplicate == 1,
            })
        })
    }

    fn history(
        &self,
        room: &RoomName,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> BrokerFuture<History> {
        let shared = self.shared.clone();
        let room = room.clone();
        let wanted_epoch = epoch.map(str::to_owned);
        Box::pin(async move {
            let settings = &shared.settings;
            let mut invocation = shared.room_script(&shared.scripts.history, &room);
            invocation
                .arg(since.map(|s| s.to_string()).unwrap_or_default())
                .arg(wanted_epoch.as_deref().unwrap_or(""))
                .arg(new_epoch())
                .arg(settings.history_ttl_ms())
                .arg(settings.meta_ttl_secs());
            let (epoch, top, entries): (String, u64, Vec<(u64, Vec<u8>)>) =
                shared.invoke(StoreOp::History, &invocation).await?;
            let same_epoch = wanted_epoch.as_deref().is_none_or(|e| e == epoch);
            let mut history = History {
                epoch: epoch.into(),
                top,
                entries: entries
                    .into_iter()
                    .map(|(seq, frame)| (seq, Bytes::from(frame)))
                    .collect(),
                complete: false,
            };
            match since {
                Some(since) if same_epoch && since <= top => {
                    history.complete = since == top
                        || history
                            .entries
                            .first()
                            .is_some_and(|(s, _)| *s == since + 1);
                }
                _ => history.entries.clear(),
            }
            Ok(history)
        })
    }

    fn subscribe_room(&self, room: &RoomName) -> BrokerFuture<()> {
        let channel = self.shared.keys.room_channel(room);
        // The registry gives up a room whose subscription fails: so does the node.
        self.subscribe(channel, Target::Room(room.clone()), true)
    }

    fn unsubscribe_room(&self, room: &RoomName) {
        self.shared
            .subs
            .unwant(&self.shared.keys.room_channel(room));
    }

    fn subscribe_user(&self, user: &UserName) -> BrokerFuture<()> {
        let channel = self.shared.keys.user_channel(user);
        // Wanted as long as the user has sessions here, confirmed in time or not.
        self.subscribe(channel, Target::User(user.clone()), false)
    }

    fn unsubscribe_user(&self, user: &UserName) {
        self.shared
            .subs
            .unwant(&self.shared.keys.user_channel(user));
    }

    fn send_to_others(&self, user: &UserName, frame: Bytes) -> BrokerFuture<usize> {
        let shared = self.shared.clone();
        let user = user.clone();
        Box::pin(async move {
            let payload = shared.signed(b'd', &frame);
            shared.to_user(&user, payload).await
        })
    }

    fn kick_others(&self, user: &UserName, reason: ByeReason) -> BrokerFuture<usize> {
        let shared = self.shared.clone();
        let user = user.clone();
        Box::pin(async move {
            let payload = shared.signed(b'k', reason.as_str().as_bytes());
            shared.to_user(&user, payload).await
        })
    }

    fn kick_session_others(&self, session: &str, reason: ByeReason) -> BrokerFuture<()> {
        // A session id is `<node>-<n>`: the command goes to that node alone.
        let node = match session.rsplit_once('-') {
            Some((node, _)) if node != self.shared.settings.node => node,
            _ => return Box::pin(futures_util::future::ready(Ok(()))),
        };
        let shared = self.shared.clone();
        let channel = shared.keys.node_channel(node);
        let payload = format!("s{reason}:{session}");
        Box::pin(async move {
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(channel).arg(payload);
            shared
                .query::<i64>(StoreOp::ToNode, &publish)
                .await
                .map(drop)
        })
    }

    fn presence_add(&self, room: &RoomName, user: &UserName, member: &str) -> BrokerFuture<()> {
        self.shared
            .presence
            .borrow_mut()
            .entry(room.clone())
            .or_default()
            .insert(member.to_owned(), user.clone());
        let shared = self.shared.clone();
        let room = room.clone();
        let members = [(member.to_owned(), user.clone())];
        // A failed add is made by the next refresh.
        Box::pin(async move { shared.presence_add(&room, &members).await })
    }

    fn presence_remove(&self, room: &RoomName, _: &UserName, member: &str) -> BrokerFuture<()> {
        {
            let mut presence = self.shared.presence.borrow_mut();
            if let Some(members) = presence.get_mut(room) {
                members.remove(member);
                if members.is_empty() {
                    presence.remove(room);
                }
            }
        }
        let shared = self.shared.clone();
        let room = room.clone();
        let member = member.to_owned();
        Box::pin(async move {
            let removed = shared
                .presence_remove(&room, std::slice::from_ref(&member))
                .await;
            if removed.is_err() {
                shared.remove_later(room, member);
            }
            removed
        })
    }

    fn presence(&self, room: &RoomName) -> BrokerFuture<Vec<UserName>> {
        let shared = self.shared.clone();
        let room = room.clone();
        Box::pin(async move {
            let mut invocation = shared.presence_script(&shared.scripts.presence_users, &room);
            invocation.arg(shared.keys.room_channel(&room));
            let users: Vec<String> = shared.invoke(StoreOp::Presence, &invocation).await?;
            let mut users: Vec<UserName> = users.into_iter().map(UserName::checked).collect();
            users.sort_unstable();
            Ok(users)
        })
    }

    fn claim_session(&self, user: &UserName, member: &str, max: usize) -> BrokerFuture<bool> {
        let shared = self.shared.clone();
        let user = user.clone();
        let member = member.to_owned();
        if max == 0 {
            // Cannot be refused (a session registering again after a crash): the node holds
            // it from now on, and a claim the store does not take is made by the next refresh.
            shared.hold_claim(user.clone(), member.clone());
        }
        Box::pin(async move {
            let claimed = shared
                .claim(&user, std::slice::from_ref(&member), max)
                .await?;
            if claimed && max > 0 {
                shared.hold_claim(user, member);
            }
            Ok(claimed)
        })
    }

    fn release_session(&self, user: &UserName, member: &str) {
        {
            let mut claims = self.shared.claims.borrow_mut();
            if let Some(members) = claims.get_mut(user) {
                members.remove(member);
                if members.is_empty() {
                    claims.remove(user);
                }
            }
        }
        let shared = self.shared.clone();
        let key = shared.keys.sessions(user);
        let member = member.to_owned();
        // A release the store does not take expires with the ttl.
        actix_rt::spawn(async move {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(key).arg(member);
            let _ = shared.query::<i64>(StoreOp::Sessions, &zrem).await;
        });
    }

    fn restart_room(&self, room: &RoomName, epoch: &str, seen: u64) -> BrokerFuture<()> {
        let shared = self.shared.clone();
        let room = room.clone();
        let epoch = epoch.to_owned();
        Box::pin(async move {
            let mut invocation = shared.room_script(&shared.scripts.restart, &room);
            invocation.arg(epoch).arg(seen);
            shared
                .invoke::<i64>(StoreOp::History, &invocation)
                .await
                .map(drop)
        })
    }

    fn healthy(&self) -> bool {
        self.shared.subs.connected() && !self.shared.store_down.get()
    }

    fn room_stream(&self, room: &RoomName) -> BrokerFuture<Option<RoomStream>> {
        let shared = self.shared.clone();
        let room = room.clone();
        Box::pin(async move {
            let mut commands = shared.commands();
            let mut read = redis::pipe();
            read.cmd("HMGET")
                .arg(shared.keys.meta(&room))
                .arg("e")
                .arg("s")
                .cmd("XLEN")
                .arg(shared.keys.history(&room));
            let read = read.query_async::<((Option<String>, Option<u64>), usize)>(&mut commands);
            let ((epoch, seq), history_len) = shared.call(StoreOp::History, read).await?;
            Ok(epoch.map(|epoch| RoomStream {
                seq: seq.unwrap_or(0),
                epoch: epoch.into(),
                history_len,
            }))
        })
    }
}

impl RedisBroker {
    /// Wants `channel`; resolves once the node's connection confirmed it, or fails after a
    /// few command timeouts (the subscription connection is down), then no longer wanting it
    /// when `give_up`.
    fn subscribe(&self, channel: String, target: Target, give_up: bool) -> BrokerFuture<()> {
        let (generation, confirmed) = match self.shared.subs.want(channel.clone(), target) {
            Wanted::Ready => return Box::pin(futures_util::future::ready(Ok(()))),
            Wanted::Pending {
                generation,
                confirmed,
            } => (generation, confirmed),
        };
        let shared = self.shared.clone();
        // Long enough for a reconnect and a resubscription.
        let wait = shared.settings.command_timeout * 2;
        Box::pin(async move {
            match tokio::time::timeout(wait, confirmed).await {
                Ok(Ok(())) => Ok(()),
                _ => {
                    if give_up {
                        shared.subs.abandon(&channel, generation);
                    }
                    Err(unavailable(
                        "the node's subscription to the message store is not confirmed",
                    ))
                }
            }
        })
    }
}

/// A fresh epoch: 16 hex digits (never a `:`, which separates it in published messages).
fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}
