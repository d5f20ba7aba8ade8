//! The registry actor: who is connected to this node, which user each session belongs to,
//! who is in which room, and the fan-out of what the broker delivers to them.
//!
//! Sessions talk to the registry with awaited `send`s (never `do_send`, which ignores the
//! mailbox bound), one at a time per session, so a flooding client is slowed at its own
//! socket instead of growing the registry's mailbox. The registry answers through each
//! session's [`Outbox`]: replays, `subscribed`, room messages and acks for one session go
//! into one queue in the order the registry produced them, which is what makes a room's
//! `seq` gapless on every subscriber.
//!
//! Room messages, presence events, and direct messages and kicks from other nodes arrive on
//! the broker's inbound stream (see [`crate::broker`]); the registry never waits for the
//! store: broker calls are spawned and each room keeps its own order ([`room`]).
//!
//! The registry runs under [`actix::Supervisor`] and a keeper ([`keeper`]) that replaces it
//! after a panic; the state that must survive it (room streams, presence) lives in the
//! broker, and each session re-registers with what it owns. What the broker holds for
//! sessions (claims, presence) is a lease at a takeover: a session re-registering asserts its
//! own again, and a session that ended around the crash releases its own through its
//! [`Disconnect`], which carries what a registry that never knew it needs; whatever neither
//! reaches lapses (see [`Broker::release_not_rejoined`]). Membership of a room carries a
//! [`RoomCursor`] shared with the session: the last `seq` queued for it, which is where a
//! re-registering session resumes. The registry does not rely on sessions to unregister
//! either: a session whose actor is gone without a `Disconnect` (a panic in a handler may
//! skip its hooks, depending on how the actor is torn down) leaves a closed mailbox, which a
//! periodic sweep finds with `Addr::connected` and removes with its room memberships.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix::WeakAddr;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use self::keeper::{Orphan, Orphans};
use self::room::{Joiner, Room};
use crate::broker::{Broker, BrokerError, BrokerEvent, PublishRequest};
use crate::metrics::{Limit, Metrics};
use crate::names::{FrameId, RoomName, UserName};
use crate::outbox::Outbox;
use crate::protocol::{ByeReason, ErrorCode, Outbound};
use crate::session::{Session, SessionGauge};
use crate::small_set::SmallSet;

pub(crate) mod admin;
pub(crate) mod keeper;
pub(crate) mod presence;
mod room;

/// Identifies a session within one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A session's position in one room: the epoch it subscribed in and the last `seq` queued
/// for it. Shared by the registry (which advances it with every message it queues) and the
/// session (which owns it across registry restarts).
#[derive(Debug)]
pub(crate) struct RoomCursor {
    epoch: Arc<str>,
    seq: AtomicU64,
}

impl RoomCursor {
    fn new(epoch: Arc<str>, seq: u64) -> Arc<Self> {
        Arc::new(RoomCursor {
            epoch,
            seq: AtomicU64::new(seq),
        })
    }

    /// The last seq queued for the session.
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    fn advance(&self, seq: u64) {
        self.seq.fetch_max(seq, Ordering::Relaxed);
    }
}

/// A session in a room: where to queue, how far it got, and who it is.
#[derive(Debug)]
struct Member {
    outbox: Arc<Outbox>,
    cursor: Arc<RoomCursor>,
    user: Option<UserName>,
}

/// What the registry keeps per connection.
#[derive(Debug)]
struct Entry {
    /// Weak: a strong address costs two allocations per connection, and a session lives by
    /// its own socket and timers, not by being known here.
    addr: WeakAddr<Session>,
    outbox: Arc<Outbox>,
    user: Option<UserName>,
    rooms: SmallSet<RoomName>,
    gauge: Arc<SessionGauge>,
}

impl Entry {
    /// Whether the session's actor is still running (a panic drops it without a goodbye).
    fn alive(&self) -> bool {
        self.addr.upgrade().is_some_and(|addr| addr.connected())
    }
}

/// Per-user and per-session caps the registry enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegistryLimits {
    /// Sessions one user may have at once; 0 = no limit.
    pub(crate) max_sessions_per_user: usize,
    /// Rooms one session may be subscribed to.
    pub(crate) max_rooms_per_session: usize,
    /// The longest frame sessions announced (error frames are cut to fit).
    pub(crate) max_frame: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            max_sessions_per_user: 0,
            max_rooms_per_session: usize::MAX,
            max_frame: usize::MAX,
        }
    }
}

/// The registry actor: who is connected, which user each session belongs to, who is in which
/// room. Applications reach it through [`ServerHandle`](crate::ServerHandle) and may add their
/// own `impl Handler<M> for Registry` with the methods below.
pub struct Registry {
    broker: Rc<dyn Broker>,
    limits: RegistryLimits,
    sweep_interval: std::time::Duration,
    /// How long after it starts the sessions of a registry this one replaced have to register
    /// again before what they held in the broker lapses.
    rejoin_bound: std::time::Duration,
    sessions: HashMap<SessionId, Entry>,
    users: HashMap<UserName, SmallSet<SessionId>>,
    /// Users with a session between its `Identify` and its admission: their channel stays
    /// wanted even when no admitted session of theirs is left here.
    identifying: HashMap<UserName, usize>,
    rooms: HashMap<RoomName, Room>,
    /// The generation of the latest room created.
    room_generations: u64,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
    presence_events: Vec<String>,
    /// Hands the sessions over to the keeper when this registry is dropped (by a panic).
    death: Option<oneshot::Sender<Orphans>>,
}

impl Registry {
    /// A registry over `broker`, sweeping every `sweep_interval`; when it is dropped, the
    /// sessions it knew go to `death`. Sessions of a registry it replaces have `rejoin_bound`
    /// to register again (see [`Broker::release_not_rejoined`]).
    pub(crate) fn new(
        broker: Rc<dyn Broker>,
        sweep_interval: std::time::Duration,
        rejoin_bound: std::time::Duration,
        death: oneshot::Sender<Orphans>,
    ) -> Self {
        Registry {
            broker,
            limits: RegistryLimits::default(),
            sweep_interval,
            rejoin_bound,
            sessions: HashMap::new(),
            users: HashMap::new(),
            identifying: HashMap::new(),
            rooms: HashMap::new(),
            room_generations: 0,
            draining: false,
            drained: Vec::new(),
            metrics: Arc::new(Metrics::new()),
            presence_events: Vec::new(),
            death: Some(death),
        }
    }

    /// Applies per-user and per-session caps.
    pub(crate) fn with_limits(mut self, limits: RegistryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Records into `metrics` (the server's) instead of a private set.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sends `join`/`leave` events in rooms whose name starts with one of `prefixes` (`""`
    /// matches every room); see [`presence`].
    pub(crate) fn with_presence_events(mut self, prefixes: Vec<String>) -> Self {
        self.presence_events = prefixes;
        self
    }

    /// Number of live sessions, with or without a completed handshake.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The sessions of `user`.
    pub fn sessions_of(&self, user: &str) -> impl Iterator<Item = SessionId> + '_ {
        self.users.get(user).into_iter().flatten().copied()
    }

    /// The sessions subscribed to `room`.
    pub fn members_of(&self, room: &str) -> impl Iterator<Item = SessionId> + '_ {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.members.keys())
            .copied()
    }

    /// The user of a session, once its handshake is done.
    pub fn user_of(&self, id: SessionId) -> Option<&UserName> {
        self.sessions.get(&id)?.user.as_ref()
    }

    /// Queues an encoded frame on every session subscribed to `room` but `except`; returns
    /// how many took it. The frame is not sequenced or kept in history: for events such as
    /// "typing" or presence, not for messages a client must not miss. Only this node's
    /// sessions get it.
    pub fn push_to_room(&self, room: &str, frame: &Bytes, except: Option<SessionId>) -> usize {
        let Some(room) = self.rooms.get(room) else {
            return 0;
        };
        room.members
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, m)| m.outbox.push(frame.clone()))
            .count()
    }

    /// The actor address of a session, to send it application messages.
    pub fn session_addr(&self, id: SessionId) -> Option<Addr<Session>> {
        self.sessions.get(&id).and_then(|e| e.addr.upgrade())
    }

    /// Queues an encoded frame (see [`encode_line`](crate::protocol::encode_line)) on a
    /// session. Returns `false` if the session is gone, closing, or over its budget.
    pub fn push_to(&self, id: SessionId, frame: Bytes) -> bool {
        self.sessions.get(&id).is_some_and(|e| e.outbox.push(frame))
    }

    /// Queues an encoded frame on every session of `user` on this node; returns how many took
    /// it.
    pub fn push_to_user(&self, user: &str, frame: &Bytes) -> usize {
        self.sessions_of(user)
            .filter(|id| self.push_to(*id, frame.clone()))
            .count()
    }

    fn push_error(&self, id: SessionId, code: ErrorCode, message: &str, frame_id: Option<&str>) {
        let frame = crate::protocol::error_line(code, message, frame_id, self.limits.max_frame);
        self.push_to(id, frame);
    }

    /// The session's id across the cluster, for presence and the user index.
    fn member_key(&self, id: SessionId) -> String {
        self.sessions
            .get(&id)
            .map_or_else(|| id.to_string(), |e| e.gauge.wire_id().to_string())
    }

    /// Runs a broker call whose answer nobody waits for; a failure is logged.
    fn spawn_broker_call(
        &self,
        call: LocalBoxFuture<'static, Result<(), BrokerError>>,
        what: &'static str,
    ) {
        actix_rt::spawn(async move {
            if let Err(error) = call.await {
                tracing::warn!(%error, what, "broker call failed");
            }
        });
    }

    fn remove_session(&mut self, id: SessionId) -> Option<Entry> {
        let member = self.member_key(id);
        let entry = self.sessions.remove(&id)?;
        if let Some(user) = &entry.user {
            self.broker.release_session(user, &member);
            if let Some(set) = self.users.get_mut(user) {
                set.remove(&id);
                if set.is_empty() {
                    self.users.remove(user);
                    self.release_user_channel(user);
                }
            }
        }
        for room in &entry.rooms {
            if let Some(user) = &entry.user {
                let call = self.broker.presence_remove(room, user, &member);
                self.spawn_broker_call(call, "presence remove");
            }
            if let Some(state) = self.rooms.get_mut(room) {
                state.members.remove(&id);
            }
            self.forget_room_if_empty(room);
        }
        // A session that left while its subscribe was in flight.
        let joining: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.joiners.contains_key(&id))
            .map(|(room, _)| room.clone())
            .collect();
        for room in joining {
            self.leave_room(&room, id);
        }
        if self.draining && self.sessions.is_empty() {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(());
            }
        }
        Some(entry)
    }

    fn sweep(&mut self) {
        let started = Instant::now();
        let dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| !e.alive())
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            if let Some(entry) = self.remove_session(*id) {
                // Its actor is gone, so its writer is too; make sure nobody queues more.
                entry.outbox.close_silently(ByeReason::Normal);
                tracing::warn!(session = %id, user = ?entry.user, peer = %entry.gauge.peer(),
                    "sweep removed a session whose actor died without unregistering");
            }
        }
        let empty: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.is_empty())
            .map(|(r, _)| r.clone())
            .collect();
        for room in &empty {
            self.forget_room_if_empty(room);
        }
        self.broker.maintain();
        self.metrics.swept(dead.len(), empty.len());
        if dead.is_empty() && empty.is_empty() {
            tracing::trace!(
                sessions = self.sessions.len(),
                rooms = self.rooms.len(),
                "sweep: nothing to remove"
            );
        } else {
            tracing::info!(
                removed_sessions = dead.len(),
                removed_rooms = empty.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "sweep"
            );
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        ctx.add_stream(self.broker.events());
        ctx.run_interval(self.sweep_interval, |act, _| act.sweep());
        // After a takeover, live sessions register again within their heartbeat (at once when
        // the keeper tells them); what none asserted by then belonged to sessions that ended
        // around the crash. Nothing to release for the first registry.
        ctx.run_later(self.rejoin_bound, |act, _| {
            act.broker.release_not_rejoined()
        });
        tracing::debug!("registry started");
    }
}

impl Supervised for Registry {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        tracing::warn!(
            sessions = self.sessions.len(),
            "registry restarting; state kept"
        );
    }
}

impl StreamHandler<BrokerEvent> for Registry {
    fn handle(&mut self, event: BrokerEvent, ctx: &mut Self::Context) {
        match event {
            BrokerEvent::Publication {
                room,
                seq,
                epoch,
                frame,
            } => self.on_publication(ctx, &room, seq, epoch, frame),
            BrokerEvent::Direct { user, frame } => {
                self.push_to_user(&user, &frame);
            }
            BrokerEvent::Joined { room, user } => self.announce(&room, &user, true),
            BrokerEvent::Left { room, user } => self.announce(&room, &user, false),
            BrokerEvent::Kick { user, reason } => {
                self.kick_local(&user, reason);
            }
            BrokerEvent::KickSession { session, reason } => {
                self.kick_session_local(&session, reason);
            }
            BrokerEvent::Interrupted => {
                tracing::warn!(
                    "the broker's inbound path broke; rooms will be checked when it is back"
                );
            }
            BrokerEvent::Resumed => {
                tracing::info!(
                    rooms = self.rooms.len(),
                    "the broker's inbound path is back; checking rooms for holes"
                );
                self.check_all_rooms(ctx);
            }
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The broker ended its stream (it only does when it is being dropped): keep serving
        // what is local rather than stop.
        tracing::error!("the broker's inbound stream ended");
    }
}

impl Drop for Registry {
    /// The keeper learns that this registry is gone (after a panic, its actor is dropped
    /// without any other notice) and which sessions must re-register.
    fn drop(&mut self) {
        if let Some(death) = self.death.take() {
            let orphans = self.sessions.iter().map(|(id, e)| Orphan {
                addr: e.addr.clone(),
                goodbye: Disconnect {
                    id: *id,
                    user: e.user.clone(),
                    member: e.gauge.wire_id().clone(),
                    rooms: e.rooms.iter().cloned().collect(),
                },
            });
            let _ = death.send(orphans.collect());
        }
    }
}

/// A registry refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The server is shutting down and takes no new sessions.
    #[error("server is draining")]
    Draining,
    /// The session is not registered (it was swept or never connected).
    #[error("unknown session")]
    UnknownSession,
    /// The user already has `max_sessions_per_user` sessions.
    #[error("too many sessions for this user")]
    UserLimit,
    /// The broker could not be asked.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A new connection, before its handshake.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub(crate) struct Connect {
    /// Session id.
    pub(crate) id: SessionId,
    /// The session actor.
    pub(crate) addr: Addr<Session>,
    /// Its outbound queue.
    pub(crate) outbox: Arc<Outbox>,
    /// The session's live numbers (heartbeat, deadline), read when connections are listed.
    pub(crate) gauge: Arc<SessionGauge>,
}

impl Handler<Connect> for Registry {
    type Result = Result<(), RegistryError>;

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) -> Self::Result {
        if self.draining {
            return Err(RegistryError::Draining);
        }
        if msg.outbox.closing().is_some() {
            // It closed before it got here: nothing to register.
            return Ok(());
        }
        self.sessions.insert(
            msg.id,
            Entry {
                addr: msg.addr.downgrade(),
                outbox: msg.outbox,
                user: None,
                rooms: SmallSet::default(),
                gauge: msg.gauge,
            },
        );
        Ok(())
    }
}

/// A session completed its handshake as `user`. Once admitted, the registry queues its
/// `welcome` in the same turn as it indexes the user, so no direct message precedes it.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub(crate) struct Identify {
    /// Session id.
    pub(crate) id: SessionId,
    /// The user it belongs to.
    pub(crate) user: UserName,
    /// The encoded `welcome` frame.
    pub(crate) welcome: Bytes,
}

impl Handler<Identify> for Registry {
    type Result = ResponseActFuture<Self, Result<(), RegistryError>>;

    fn handle(&mut self, msg: Identify, _: &mut Self::Context) -> Self::Result {
        if self.draining {
            return Box::pin(actix::fut::ready(Err(RegistryError::Draining)));
        }
        if !self.sessions.contains_key(&msg.id) {
            return Box::pin(actix::fut::ready(Err(RegistryError::UnknownSession)));
        }
        // First the node hears the user's direct messages from other nodes, then it claims
        // the session: a `send` counted in `ack.delivered` reaches it. Asked for every
        // session, not only the user's first here, whose subscription may still be pending.
        *self.identifying.entry(msg.user.clone()).or_default() += 1;
        let subscribed = self.broker.subscribe_user(&msg.user);
        Box::pin(
            async move {
                if let Err(error) = subscribed.await {
                    // Still wanted: the subscription is made when the store is back.
                    tracing::warn!(user = %msg.user, %error, "user subscription not confirmed");
                }
                msg
            }
            .into_actor(self)
            .then(|msg, act, _| {
                let max = act.limits.max_sessions_per_user;
                let member = act.member_key(msg.id);
                act.broker
                    .claim_session(&msg.user, &member, max)
                    .into_actor(act)
                    .map(move |claimed, act, _| {
                        let user = msg.user.clone();
                        let admitted = act.admit(claimed, msg, member, max);
                        if let Some(count) = act.identifying.get_mut(&user) {
                            *count -= 1;
                            if *count == 0 {
                                act.identifying.remove(&user);
                            }
                        }
                        act.release_user_channel(&user);
                        admitted
                    })
            }),
        )
    }
}

impl Registry {
    /// Records the outcome of a session's claim: admitted (indexed under its user, its
    /// `welcome` queued), or why not.
    fn admit(
        &mut self,
        claimed: Result<bool, BrokerError>,
        msg: Identify,
        member: String,
        max: usize,
    ) -> Result<(), RegistryError> {
        match claimed {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(user = %msg.user, max, "session refused: max_sessions_per_user reached");
                self.metrics.limit_hit(Limit::MaxSessionsPerUser);
                return Err(RegistryError::UserLimit);
            }
            Err(error) => {
                // A claim that timed out may have been made after all.
                self.broker.release_session(&msg.user, &member);
                return Err(error.into());
            }
        }
        let Some(entry) = self.sessions.get_mut(&msg.id) else {
            // It left while the claim was in flight.
            self.broker.release_session(&msg.user, &member);
            return Err(RegistryError::UnknownSession);
        };
        entry.user = Some(msg.user.clone());
        entry.outbox.push(msg.welcome);
        self.index_user(msg.id, msg.user);
        Ok(())
    }

    /// Indexes a session under its user; true for the user's first session on this node.
    fn index_user(&mut self, id: SessionId, user: UserName) -> bool {
        let sessions = self.users.entry(user).or_default();
        sessions.insert(id);
        sessions.len() == 1
    }

    /// The node stops listening to a user's channel once no session of theirs is here or
    /// on its way in.
    fn release_user_channel(&mut self, user: &UserName) {
        if !self.users.contains_key(user) && !self.identifying.contains_key(user) {
            self.broker.unsubscribe_user(user);
        }
    }
}

/// A session ended. It carries what the session held in the broker: a registry that took
/// over after a crash may never have known the session (it left around the crash, its goodbye
/// lost with the old registry's mailbox), and releases that from here.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Disconnect {
    /// Session id.
    pub(crate) id: SessionId,
    /// The user it was admitted as.
    pub(crate) user: Option<UserName>,
    /// Its id across the cluster (`welcome.session`), its key in presence and the user index.
    pub(crate) member: Arc<str>,
    /// The rooms it was in.
    pub(crate) rooms: Vec<RoomName>,
}

impl Handler<Disconnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) {
        if self.remove_session(msg.id).is_some() {
            return;
        }
        let Some(user) = &msg.user else {
            return;
        };
        // Releasing what the session no longer holds (its registry released it before the
        // crash) changes nothing.
        self.broker.release_session(user, &msg.member);
        for room in &msg.rooms {
            let call = self.broker.presence_remove(room, user, &msg.member);
            self.spawn_broker_call(call, "presence remove");
        }
    }
}

/// Tells a session that the registry dropped it from a room on its own (a resync).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RoomDropped(pub(crate) RoomName);

/// A session registering again with a fresh registry after the one it knew crashed: what it
/// owns travels with it. The registry replays what each room's stream holds after the
/// session's cursor, or sends `unsubscribed{room, reason:"resync"}` where it cannot.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub(crate) struct Rejoin {
    /// What a new connection registers with.
    pub(crate) connect: Connect,
    /// The user, when the handshake was done.
    pub(crate) user: Option<UserName>,
    /// The rooms it is in and how far it got in each.
    pub(crate) rooms: Vec<(RoomName, Arc<RoomCursor>)>,
}

impl Handler<Rejoin> for Registry {
    type Result = Result<(), RegistryError>;

    fn handle(&mut self, msg: Rejoin, ctx: &mut Self::Context) -> Self::Result {
        let Rejoin {
            connect,
            user,
            rooms,
        } = msg;
        let id = connect.id;
        <Self as Handler<Connect>>::handle(self, connect, ctx)?;
        if let Some(user) = user {
            if let Some(entry) = self.sessions.get_mut(&id) {
                entry.user = Some(user.clone());
                if self.index_user(id, user.clone()) {
                    self.spawn_broker_call(self.broker.subscribe_user(&user), "user subscribe");
                }
                self.claim_again(ctx, id, user);
            }
        }
        for (room, cursor) in rooms {
            let since = Some(cursor.seq());
            let epoch = Some(cursor.epoch.to_string());
            self.join(ctx, room, id, Joiner::new(since, epoch, Some(cursor), None));
        }
        Ok(())
    }
}

impl Registry {
    /// Claims are leases across a crash (see [`Broker::events`]): a session registering again
    /// claims anew, over no limit, since it was admitted before.
    fn claim_again(&mut self, ctx: &mut Context<Self>, id: SessionId, user: UserName) {
        let member = self.member_key(id);
        let claim = self.broker.claim_session(&user, &member, 0);
        ctx.spawn(claim.into_actor(self).map(move |claimed, act, _| {
            if let Err(error) = claimed {
                tracing::warn!(%user, %error, "claim of a session registering again not confirmed");
            }
            if !act.sessions.contains_key(&id) {
                // It left while the claim was in flight.
                act.broker.release_session(&user, &member);
            }
        }));
    }
}

/// `subscribe` from a session. The registry queues the replay and `subscribed` on the
/// session's outbox, and answers with the session's cursor in the room when it is now in it.
#[derive(Message)]
#[rtype(result = "Option<Arc<RoomCursor>>")]
pub(crate) struct Subscribe {
    /// Session id.
    pub(crate) id: SessionId,
    /// Room name.
    pub(crate) room: RoomName,
    /// Replay after this seq.
    pub(crate) since: Option<u64>,
    /// Epoch of `since`.
    pub(crate) epoch: Option<String>,
}

impl Handler<Subscribe> for Registry {
    type Result = ResponseFuture<Option<Arc<RoomCursor>>>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.sessions.get(&msg.id) else {
            return Box::pin(async { None });
        };
        let max = self.limits.max_rooms_per_session;
        if entry.rooms.len() >= max && !entry.rooms.contains(&msg.room) {
            tracing::info!(session = %msg.id, max, "subscribe refused: max_rooms_per_session reached");
            self.metrics.limit_hit(Limit::MaxRoomsPerSession);
            let message = format!("at most {max} rooms per session");
            self.push_error(msg.id, ErrorCode::Forbidden, &message, None);
            return Box::pin(async { None });
        }
        let (reply, answer) = oneshot::channel();
        let joiner = Joiner::new(msg.since, msg.epoch, None, Some(reply));
        self.join(ctx, msg.room, msg.id, joiner);
        Box::pin(async move { answer.await.ok().flatten() })
    }
}

/// `unsubscribe` from a session; the registry queues `unsubscribed`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Unsubscribe {
    /// Session id.
    pub(crate) id: SessionId,
    /// Room name.
    pub(crate) room: RoomName,
}

impl Handler<Unsubscribe> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        let Some(entry) = self.sessions.get_mut(&msg.id) else {
            return;
        };
        entry.rooms.remove(&msg.room);
        entry.outbox.push(
            Outbound::Unsubscribed {
                room: &msg.room,
                reason: None,
            }
            .encode(),
        );
        self.leave_room(&msg.room, msg.id);
    }
}

/// A message for a room, from a session (`publish`) or from the application.
#[derive(Message)]
#[rtype(result = "Result<u64, BrokerError>")]
pub(crate) struct Publish {
    /// The publishing session, which gets the `ack`; `None` for server-side pushes.
    pub(crate) session: Option<SessionId>,
    /// Room name.
    pub(crate) room: RoomName,
    /// Publishing user; `None` (sent as `from: null`) for server-side pushes.
    pub(crate) from: Option<UserName>,
    /// Payload as raw JSON.
    pub(crate) data: Box<RawValue>,
    /// The publisher's id, for dedupe and the ack.
    pub(crate) id: Option<FrameId>,
}

impl Handler<Publish> for Registry {
    type Result = ResponseActFuture<Self, Result<u64, BrokerError>>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        let room = msg.room.clone();
        let ack_id = msg.id.clone();
        let request = PublishRequest {
            room: msg.room,
            from: msg.from,
            data: msg.data,
            id: msg.id,
        };
        // The message itself comes back on the broker's inbound stream, in seq order.
        let published = self.broker.publish(request);
        Box::pin(
            published
                .into_actor(self)
                .map(move |result, act, _| match result {
                    Ok(published) => {
                        if let (Some(session), Some(id)) = (msg.session, ack_id.as_deref()) {
                            let ack = Outbound::Ack {
                                id,
                                seq: Some(published.seq),
                                delivered: None,
                            }
                            .encode();
                            act.ack_after(&room, published.seq, &published.epoch, session, ack);
                        }
                        Ok(published.seq)
                    }
                    Err(e) => {
                        if let Some(session) = msg.session {
                            act.broker_failed(session, &e, ack_id.as_deref());
                        }
                        Err(e)
                    }
                }),
        )
    }
}

/// A direct message to every session of a user (`send`), on every node.
#[derive(Message)]
#[rtype(result = "Result<usize, BrokerError>")]
pub(crate) struct SendTo {
    /// The sending session, which gets the `ack`; `None` for server-side pushes.
    pub(crate) session: Option<SessionId>,
    /// Sending user; `None` for server-side pushes.
    pub(crate) from: Option<UserName>,
    /// Recipient user.
    pub(crate) to: UserName,
    /// Payload as raw JSON.
    pub(crate) data: Box<RawValue>,
    /// The sender's id for the ack.
    pub(crate) id: Option<FrameId>,
}

impl Handler<SendTo> for Registry {
    type Result = ResponseActFuture<Self, Result<usize, BrokerError>>;

    fn handle(&mut self, msg: SendTo, _: &mut Self::Context) -> Self::Result {
        let frame = Outbound::Message {
            room: None,
            seq: None,
            from: msg.from.as_deref(),
            data: &msg.data,
            id: msg.id.as_deref(),
        }
        .encode();
        let here = self.push_to_user(&msg.to, &frame);
        let elsewhere = self.broker.send_to_others(&msg.to, frame);
        Box::pin(elsewhere.into_actor(self).map(move |result, act, _| {
            let delivered = match result {
                Ok(elsewhere) => here + elsewhere,
                Err(e) if here == 0 => {
                    if let Some(session) = msg.session {
                        act.broker_failed(session, &e, msg.id.as_deref());
                    }
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "direct message not sent to other nodes");
                    here
                }
            };
            if let (Some(session), Some(id)) = (msg.session, msg.id.as_deref()) {
                let ack = Outbound::Ack {
                    id,
                    seq: None,
                    delivered: Some(delivered),
                };
                act.push_to(session, ack.encode());
            }
            Ok(delivered)
        }))
    }
}

/// An unsequenced frame for the members of a room (see [`Registry::push_to_room`]).
#[derive(Message)]
#[rtype(result = "usize")]
pub(crate) struct Broadcast {
    /// Room name.
    pub(crate) room: RoomName,
    /// The encoded frame.
    pub(crate) frame: Bytes,
    /// A session that does not get it (the sender).
    pub(crate) except: Option<SessionId>,
}

impl Handler<Broadcast> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) -> usize {
        self.push_to_room(&msg.room, &msg.frame, msg.except)
    }
}

/// Closes every session of a user with `bye{reason}`, on every node.
#[derive(Message)]
#[rtype(result = "Result<usize, BrokerError>")]
pub(crate) struct Kick {
    /// The user.
    pub(crate) user: UserName,
    /// The `bye` reason.
    pub(crate) reason: ByeReason,
}

impl Handler<Kick> for Registry {
    type Result = ResponseFuture<Result<usize, BrokerError>>;

    fn handle(&mut self, msg: Kick, _: &mut Self::Context) -> Self::Result {
        let here = self.kick_local(&msg.user, msg.reason);
        let elsewhere = self.broker.kick_others(&msg.user, msg.reason);
        Box::pin(async move { Ok(here + elsewhere.await?) })
    }
}

impl Registry {
    fn kick_local(&mut self, user: &str, reason: ByeReason) -> usize {
        self.sessions_of(user)
            .filter_map(|id| self.sessions.get(&id))
            .filter(|e| e.outbox.close(reason, None))
            .count()
    }
}

/// Starts a graceful shutdown: new sessions are refused and every session gets
/// `bye{reason:"shutdown", reconnect_ms}` with a jittered hint. Resolves when the last
/// session has gone.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    /// Each session's hint is drawn from `[reconnect_ms, 2 × reconnect_ms]`.
    pub(crate) reconnect_ms: u64,
}

impl Handler<Drain> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let base = msg.reconnect_ms;
        for entry in self.sessions.values() {
            let hint = base + fastrand::u64(0..=base);
            entry.outbox.close(ByeReason::Shutdown, Some(hint));
        }
        tracing::info!(sessions = self.sessions.len(), "draining");
        let (tx, rx) = oneshot::channel();
        if self.sessions.is_empty() {
            let _ = tx.send(());
        } else {
            self.drained.push(tx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Runs a sweep now instead of waiting for the next tick.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SweepNow;

impl Handler<SweepNow> for Registry {
    type Result = ();

    fn handle(&mut self, _: SweepNow, _: &mut Self::Context) {
        self.sweep();
    }
}
