//! The session actor: one per connection, TCP or WebSocket alike.
//!
//! A session owns its connection's inbound frames (a stream added with `add_stream`), its
//! heartbeat, and the handshake; the outbound side belongs to a writer task that drains the
//! session's bounded [`Outbox`] into the transport ([`Session::start_on`] is the seam). Frames that concern other sessions (rooms, direct messages)
//! are forwarded to the [`Registry`] one at a time with an awaited `send`: while the
//! registry works on one, the session reads nothing more, which is the backpressure that
//! keeps a flooding client from growing anyone's mailbox.
//!
//! Every server-initiated close goes through [`Outbox::close`]: `bye{reason}` is queued behind
//! whatever was already queued, the writer flushes it all (bounded by `close_timeout`, and for
//! a peer the heartbeat gave up on by its dead-peer bound), shuts the socket down and tells the
//! session, which then stops. Whoever starts the close, the outbox tells the session at once
//! and the session leaves the registry (rooms, presence, user index) right then: a connection
//! that is finished is gone, only its flush goes on.
//!
//! The session owns what must survive a registry crash: its user, its rooms and its
//! [`RoomCursor`] in each. When the registry it knew is replaced (the slot's generation
//! changed), it registers again with all of it ([`Rejoin`](registry::Rejoin)), and it closes
//! itself if no registry can be reached: never a zombie that is pinged but receives nothing.

mod gate;
mod gauge;
mod handler;
mod heartbeat;

pub(crate) use gauge::SessionGauge;
pub(crate) use handler::Handlers;
pub use handler::{AppFrame, FrameHandler};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use tokio_util::task::AbortOnDropHandle;
use tracing::Span;

use self::heartbeat::{Heartbeat, Tick};
use crate::auth::{AuthError, Authenticator, Patterns};
use crate::config::Config;
use crate::hooks::{Hooks, Meta};
use crate::limits::{ConnectionPermit, ConnectionTracker};
use crate::metrics::{Limit, Metrics};
use crate::names::{FrameId, NameLimits, RoomName, UserName};
use crate::outbox::{
    ByteSink, Flushed, FrameSink, OnEvent, Outbox, OutboxEvent, Worker, WriterExit,
};
use crate::panics;
use crate::protocol::codec::{CodecError, Incoming, LineCodec};
use crate::protocol::{
    encode_line, message_len, with_line, ByeReason, ErrorCode, HeartbeatInfo, Inbound, Outbound,
    ParseError,
};
use crate::registry::keeper::{RegistryGone, RegistryRestarted, RegistrySlot};
use crate::registry::{self, Registry, RegistryError, RoomCursor, SessionId};

/// Initial size of a connection's read buffer; it grows as a frame needs it, up to
/// `max_frame`.
const READ_BUFFER: usize = 128;

/// What every session of one server shares.
#[derive(Debug)]
pub(crate) struct SessionShared {
    /// The server's configuration.
    pub(crate) config: Config,
    /// Where the registry running now is found.
    pub(crate) slot: Arc<RegistrySlot>,
    /// Application frame handlers.
    pub(crate) handlers: Handlers,
    /// Token verification, when authentication is configured.
    pub(crate) authenticator: Option<Authenticator>,
    /// The application's hooks.
    pub(crate) hooks: Hooks,
    /// Whom a session may `send` to unless its token says (`auth.send`); `None`: anyone.
    send_default: Option<Patterns>,
    names: NameLimits,
    /// The server's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Open connections of every transport, against the connection limits.
    pub(crate) tracker: Arc<ConnectionTracker>,
    /// Prefix of the session ids this process hands out: the node's id in the cluster, with a
    /// random part per start.
    node: String,
    next_id: AtomicU64,
    /// Where the heartbeat tick grid starts.
    epoch: Instant,
}

impl SessionShared {
    /// Shared state for sessions of one server.
    pub(crate) fn new(
        config: Config,
        node: String,
        slot: Arc<RegistrySlot>,
        handlers: Handlers,
        authenticator: Option<Authenticator>,
        hooks: Hooks,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(SessionShared {
            names: config.limits.names(),
            tracker: ConnectionTracker::new(&config.limits),
            send_default: config.auth.send.patterns(),
            config,
            slot,
            handlers,
            authenticator,
            hooks,
            metrics,
            node,
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
        })
    }

    /// The first instant at or after `at` on the heartbeat tick grid of `interval`: slots of
    /// [`TICK_GRID`] (or of the largest divisor of it that divides `interval`, so that every
    /// later tick stays on the grid too). Timers that fall in one slot fire in one wake-up of
    /// their worker instead of one each; with a 1 s heartbeat a session's pings still spread
    /// over 100 slots.
    fn on_tick_grid(&self, at: Instant, interval: Duration) -> tokio::time::Instant {
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let grid_ms = gcd(interval_ms, TICK_GRID.as_millis() as u64).max(1);
        let since = u64::try_from(at.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX / 2);
        let on_grid = self.epoch + Duration::from_millis(since.div_ceil(grid_ms) * grid_ms);
        tokio::time::Instant::from_std(on_grid)
    }
}

/// The heartbeat tick grid (see [`SessionShared::on_tick_grid`]).
const TICK_GRID: Duration = Duration::from_millis(10);

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One connection's actor. Applications meet it in frame handlers and in their own
/// `Handler<M> for Session` implementations.
pub struct Session {
    id: SessionId,
    wire_id: Arc<str>,
    user: Option<UserName>,
    /// Rooms the registry confirmed with `subscribed`, until `unsubscribed`, with how far this
    /// session got in each. Boxed when the first room is joined: the map is 48 bytes inline,
    /// and one more word per session is what moves its task over a 128-byte size step.
    #[allow(clippy::box_collection)]
    rooms: Option<Box<HashMap<RoomName, Arc<RoomCursor>>>>,
    shared: Arc<SessionShared>,
    /// The generation (in the slot) of the registry this session is registered with; its
    /// address is borrowed from the slot for each request, not kept per connection.
    registry_generation: u64,
    /// Since when no registry could be reached, while that lasts.
    registry_lost: Option<Instant>,
    /// This session has told the registry it is gone.
    unregistered: bool,
    outbox: Arc<Outbox>,
    gauge: Arc<SessionGauge>,
    heartbeat: Option<Heartbeat>,
    handshake_timer: Option<SpawnHandle>,
    bad_frames: u32,
    closing: bool,
    /// Rooms the user's token (or the connect hook) allows; `None` allows all.
    room_policy: Option<Patterns>,
    /// Users this session may `send` to: the token's `send` claim, the connect hook's choice,
    /// or `auth.send`; `None` allows all.
    send_policy: Option<Patterns>,
    /// What the connect hook attached.
    meta: Meta,
    /// Boxed: most servers set no `message_rate`, and every session's actor carries this field.
    rate: Option<Box<governor::DefaultDirectRateLimiter>>,
    rate_violations: u32,
    _permit: Option<ConnectionPermit>,
    writer: Writer,
    /// `None` while the `debug` span is disabled (the default): 40 bytes saved per session.
    span: Option<Box<Span>>,
}

/// Where a new session's frames go.
enum Out<K> {
    /// A writer task drains the outbox into this sink.
    Task(K),
    /// The session writes this socket itself, on this worker.
    Direct(OwnedWriteHalf, Arc<Worker>),
}

/// How a session's outbox reaches its socket.
enum Writer {
    /// A writer task; aborted with the session, even when the session dies by a panic.
    Task { _abort: AbortOnDropHandle<()> },
    /// Direct writes; the flush future while a write would block or the connection closes.
    Direct(Option<SpawnHandle>),
}

impl Drop for Session {
    /// The socket closes with the session, even after a panic, whoever still holds the outbox.
    fn drop(&mut self) {
        self.outbox.detach();
    }
}

impl Session {
    /// Starts a session for an accepted byte-stream connection (TLS, or an in-memory pipe)
    /// on the current arbiter, with a writer task. The `permit`, if any, holds the
    /// connection's slot in the connection limits until the session ends.
    pub(crate) fn start<S>(
        io: S,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        permit: Option<ConnectionPermit>,
    ) -> Addr<Session>
    where
        S: AsyncRead + AsyncWrite + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let codec = LineCodec::new(shared.config.max_frame);
        let lines = FramedRead::with_capacity(read, codec, READ_BUFFER)
            .map(|line| line.map(Incoming::Frame));
        Session::start_on(lines, ByteSink(write), peer, shared, permit)
    }

    /// Starts a session for an accepted plain TCP connection on `worker`, the current
    /// arbiter. The session writes its socket itself (see [`crate::outbox`]): no writer task
    /// unless a write would block.
    pub(crate) fn start_tcp(
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        permit: Option<ConnectionPermit>,
        worker: Arc<Worker>,
    ) -> Addr<Session> {
        worker.enter();
        let (read, write) = stream.into_split();
        let codec = LineCodec::new(shared.config.max_frame);
        let lines = FramedRead::with_capacity(read, codec, READ_BUFFER)
            .map(|line| line.map(Incoming::Frame));
        let out = Out::<ByteSink<tokio::io::Sink>>::Direct(write, worker);
        Session::create_on(lines, out, peer, shared, permit)
    }

    /// Starts a session on any transport, on the current arbiter: `incoming` is what the peer
    /// sends, `sink` is where the session's writer task puts what the outbox holds. This is
    /// where a transport ends and the session begins.
    pub(crate) fn start_on<R, K>(
        incoming: R,
        sink: K,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        permit: Option<ConnectionPermit>,
    ) -> Addr<Session>
    where
        R: Stream<Item = Result<Incoming, CodecError>> + 'static,
        K: FrameSink + 'static,
    {
        Session::create_on(incoming, Out::Task(sink), peer, shared, permit)
    }

    fn create_on<R, K>(
        incoming: R,
        out: Out<K>,
        peer: SocketAddr,
        shared: Arc<SessionShared>,
        permit: Option<ConnectionPermit>,
    ) -> Addr<Session>
    where
        R: Stream<Item = Result<Incoming, CodecError>> + 'static,
        K: FrameSink + 'static,
    {
        Session::create(move |ctx| {
            let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let wire_id: Arc<str> = format!("{}-{n}", shared.node).into();
            let span =
                tracing::debug_span!("session", id = %wire_id, %peer, user = tracing::field::Empty);
            let me = ctx.address().downgrade();
            let on_event: OnEvent = Box::new(move |event| {
                if let Some(me) = me.upgrade() {
                    // At most one of each at a time: an outbox starts closing once, and blocks
                    // again only after its flush went idle.
                    match event {
                        OutboxEvent::CloseBegan => me.do_send(CloseBegan),
                        OutboxEvent::Blocked => me.do_send(Blocked),
                    }
                }
            });
            let budget = shared.config.outbound_budget;
            let metrics = shared.metrics.clone();
            let (outbox, writer) = match out {
                Out::Task(sink) => {
                    let outbox = Outbox::for_session(budget, metrics, on_event);
                    let addr = ctx.address();
                    let writer = outbox.clone().run_sink(sink, shared.config.close_timeout);
                    let writer = actix_rt::spawn(async move {
                        let exit = writer.await;
                        addr.do_send(WriterDone(exit));
                    });
                    let _abort = AbortOnDropHandle::new(writer);
                    (outbox, Writer::Task { _abort })
                }
                Out::Direct(socket, worker) => {
                    let outbox = Outbox::direct(budget, metrics, on_event, socket, worker);
                    (outbox, Writer::Direct(None))
                }
            };
            let gauge = SessionGauge::new(wire_id.clone(), peer);
            let rate = shared.config.limits.session_rate_limiter().map(Box::new);
            let send_policy = shared.send_default.clone();
            ctx.add_stream(incoming);
            // The generation the session starts with: a registry published after it makes
            // the session register again before its first request.
            let registry_generation = shared.slot.generation();
            Session {
                id: SessionId(n),
                wire_id,
                user: None,
                rooms: None,
                registry_generation,
                registry_lost: None,
                unregistered: false,
                shared,
                outbox,
                gauge,
                heartbeat: None,
                handshake_timer: None,
                bad_frames: 0,
                closing: false,
                room_policy: None,
                send_policy,
                meta: Meta::default(),
                rate,
                rate_violations: 0,
                _permit: permit,
                writer,
                span: (!span.is_disabled()).then(|| Box::new(span)),
            }
        })
    }

    /// This session's id within the process.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The id sent to the client in `welcome.session`.
    pub fn wire_id(&self) -> &str {
        &self.wire_id
    }

    /// The user, once the handshake is done.
    pub fn user(&self) -> Option<&UserName> {
        self.user.as_ref()
    }

    /// The rooms this session is subscribed to.
    pub fn rooms(&self) -> impl Iterator<Item = &RoomName> + '_ {
        self.rooms.iter().flat_map(|rooms| rooms.keys())
    }

    /// Forgets `room`, and the map with the last one.
    fn leave_room(&mut self, room: &RoomName) {
        if let Some(rooms) = &mut self.rooms {
            rooms.remove(room);
            if rooms.is_empty() {
                self.rooms = None;
            }
        }
    }

    /// Whether this session is subscribed to `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_some_and(|rooms| rooms.contains_key(room))
    }

    /// What the connect hook attached to this session (empty without one).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The server's name rules, to validate names in application frames.
    pub fn names(&self) -> &NameLimits {
        &self.shared.names
    }

    /// Checks a room named by a frame: its name against the configured limits, then the
    /// user's token (its `rooms` claim). On failure the client gets `error` (`bad_request` or
    /// `forbidden`, with the frame's `id`) and the result is `None`.
    pub fn allowed_room(&self, room: &str, id: Option<&str>) -> Option<RoomName> {
        let room = match self.shared.names.room(room) {
            Ok(room) => room,
            Err(e) => {
                self.send_error(ErrorCode::BadRequest, &e.to_string(), id);
                return None;
            }
        };
        self.room_allowed(&room, id).then_some(room)
    }

    /// Checks a user a frame wants to message: the name, then the session's `send` policy (its
    /// token's `send` claim, the connect hook's choice, or `auth.send`). On failure the client
    /// gets `error` (`bad_request` or `forbidden`, with the frame's `id`) and the result is
    /// `None`.
    pub fn allowed_recipient(&self, user: &str, id: Option<&str>) -> Option<UserName> {
        let user = match UserName::new(user) {
            Ok(user) => user,
            Err(e) => {
                self.send_error(ErrorCode::BadRequest, &e.for_field("to").to_string(), id);
                return None;
            }
        };
        self.recipient_allowed(&user, id).then_some(user)
    }

    /// Queues `frame` (see [`encode_line`]) on every other session subscribed to `room`: an
    /// unsequenced event such as "typing", not kept in history. Like every registry request of
    /// a session it is awaited before the session reads on, so it keeps its place among this
    /// session's frames. A room the token's `rooms` claim does not allow is refused with
    /// `error{code:"forbidden"}` (check it first with [`Session::allowed_room`] to give the
    /// error the frame's `id`); the result says whether the frame went to the registry.
    pub fn broadcast(&mut self, ctx: &mut Context<Self>, room: &RoomName, frame: Bytes) -> bool {
        if !self.room_allowed(room, None) {
            return false;
        }
        let msg = registry::Broadcast {
            room: room.clone(),
            frame,
            except: Some(self.id),
        };
        self.ask(ctx, msg, |_, _, _| {});
        true
    }

    /// The remote address.
    pub fn peer(&self) -> SocketAddr {
        self.gauge.peer()
    }

    /// The registry running now.
    pub fn registry(&self) -> Addr<Registry> {
        self.shared.slot.current()
    }

    /// The tracing span of this session (at `debug` level, so that it costs nothing per
    /// connection under the default `info` filter); log with `parent: session.span()` and add
    /// `session = %session.wire_id()` to events that must carry the id at `info`.
    pub fn span(&self) -> &Span {
        static DISABLED: Span = Span::none();
        self.span.as_deref().unwrap_or(&DISABLED)
    }

    /// Queues any serialisable value as one frame. Returns `false` if it was not queued
    /// (closing, or the outbound budget ran out, which closes the connection).
    pub fn send_frame<T: Serialize + ?Sized>(&self, frame: &T) -> bool {
        self.outbox.push(encode_line(frame))
    }

    /// Queues an `error` frame.
    pub fn send_error(&self, code: ErrorCode, message: &str, id: Option<&str>) -> bool {
        let max_frame = self.shared.config.max_frame;
        self.outbox
            .push(crate::protocol::error_line(code, message, id, max_frame))
    }

    /// Closes the connection with `bye{reason}`, after what is already queued.
    pub fn close(&mut self, reason: ByeReason, reconnect_ms: Option<u64>) {
        self.close_by(reason, reconnect_ms, None);
    }

    /// Closes the connection, with the flush ending at `deadline` at the latest.
    fn close_by(
        &mut self,
        reason: ByeReason,
        reconnect_ms: Option<u64>,
        deadline: Option<Instant>,
    ) {
        if self.closing {
            return;
        }
        self.closing = true;
        if self.outbox.close_by(reason, reconnect_ms, deadline) {
            match reason {
                ByeReason::Normal | ByeReason::Shutdown | ByeReason::Kicked => {
                    tracing::debug!(parent: self.span(), %reason, "closing")
                }
                _ => {
                    tracing::info!(parent: self.span(), session = %self.wire_id, %reason, "closing")
                }
            }
        }
    }

    /// Sends `msg` to the registry and runs `then` with its answer. Nothing else reaches this
    /// session (frames, ticks, messages) until then, which orders a session's requests and
    /// slows a flooding client down at its own socket.
    fn ask<M, F>(&mut self, ctx: &mut Context<Self>, msg: M, then: F)
    where
        M: Message + std::marker::Send + 'static,
        M::Result: std::marker::Send,
        Registry: Handler<M>,
        F: FnOnce(&mut Self, &mut Context<Self>, M::Result) + 'static,
    {
        self.ask_for(ctx, msg, None, then);
    }

    /// [`ask`](Self::ask) for a client frame with an `id`: when the registry cannot be reached
    /// (it crashed with the request in its mailbox), the `error` frame names that `id`.
    fn ask_for<M, F>(&mut self, ctx: &mut Context<Self>, msg: M, id: Option<FrameId>, then: F)
    where
        M: Message + std::marker::Send + 'static,
        M::Result: std::marker::Send,
        Registry: Handler<M>,
        F: FnOnce(&mut Self, &mut Context<Self>, M::Result) + 'static,
    {
        self.sync_registry(ctx);
        // Only the registry this session registered with: one that is gone fails like a
        // request lost in its mailbox, and the next sync joins its successor first.
        let request = match self
            .shared
            .slot
            .with_current(self.registry_generation, |registry| registry.send(msg))
        {
            Some(request) => Either::Left(request),
            None => Either::Right(std::future::ready(Err(MailboxError::Closed))),
        };
        ctx.wait(
            request
                .into_actor(self)
                .map(move |answer, act, ctx| match answer {
                    Ok(result) => then(act, ctx, result),
                    Err(e) => {
                        tracing::warn!(parent: act.span(), session = %act.wire_id, error = %e, "registry unreachable");
                        act.registry_lost.get_or_insert_with(Instant::now);
                        act.send_error(
                            ErrorCode::Internal,
                            "registry unavailable",
                            id.as_deref(),
                        );
                    }
                }),
        );
    }

    /// Follows the slot to the registry running now, registering again with it when it is not
    /// the one this session knew (or the last request could not reach it).
    fn sync_registry(&mut self, ctx: &mut Context<Self>) {
        if self.shared.slot.has_failed() {
            return self.registry_gone();
        }
        let generation = self.shared.slot.generation();
        if generation == self.registry_generation && self.registry_lost.is_none() {
            return;
        }
        let replaced = generation != self.registry_generation;
        let registry = self.shared.slot.current();
        self.registry_generation = generation;
        if self.unregistered {
            if replaced {
                // The goodbye may have died with the registry it went to.
                registry.do_send(self.disconnect_message());
            }
            return;
        }
        let rejoin = registry::Rejoin {
            connect: self.connect_message(ctx),
            user: self.user.clone(),
            rooms: self
                .rooms
                .iter()
                .flat_map(|rooms| rooms.iter())
                .map(|(room, cursor)| (room.clone(), cursor.clone()))
                .collect(),
        };
        let request = registry.send(rejoin);
        ctx.wait(request.into_actor(self).map(|answer, act, _| match answer {
            Ok(Ok(())) => {
                act.registry_lost = None;
                tracing::info!(parent: act.span(), session = %act.wire_id, "registered with a fresh registry");
            }
            Ok(Err(RegistryError::Draining)) => {
                let reconnect_ms = act.shared.config.shutdown_reconnect.as_millis() as u64;
                act.close(ByeReason::Shutdown, Some(reconnect_ms));
            }
            Ok(Err(_)) | Err(_) => {
                act.registry_lost.get_or_insert_with(Instant::now);
            }
        }));
    }

    /// No registry will serve this session again: it closes rather than linger unserved.
    fn registry_gone(&mut self) {
        let base = self.shared.config.shutdown_reconnect.as_millis() as u64;
        self.close(ByeReason::Shutdown, Some(base + fastrand::u64(0..=base)));
    }

    fn connect_message(&self, ctx: &mut Context<Self>) -> registry::Connect {
        registry::Connect {
            id: self.id,
            addr: ctx.address(),
            outbox: self.outbox.clone(),
            gauge: self.gauge.clone(),
        }
    }

    /// Leaves the registry (rooms, presence, user index), once: the registry running now,
    /// which may have replaced the one this session knew.
    fn unregister(&mut self) {
        if !self.unregistered {
            self.unregistered = true;
            // Once, and once more per registry restart (bounded): `do_send` cannot pile up.
            self.shared
                .slot
                .current()
                .do_send(self.disconnect_message());
        }
    }

    fn disconnect_message(&self) -> registry::Disconnect {
        registry::Disconnect {
            id: self.id,
            user: self.user.clone(),
            member: self.wire_id.clone(),
            rooms: self.rooms().cloned().collect(),
        }
    }

    fn on_line(&mut self, line: Bytes, ctx: &mut Context<Self>) {
        if self.closing || self.outbox.closing().is_some() {
            return;
        }
        let now = Instant::now();
        if let Some(hb) = &mut self.heartbeat {
            hb.received(now);
            self.gauge.alive(hb.dead_by());
        }
        if !self.within_rate() {
            return;
        }
        // A registry that was replaced since this session last asked is joined before this
        // frame is handled (frame handlers reach the registry too).
        self.sync_registry(ctx);
        let parsed = Inbound::parse_limited(&line, &self.shared.names);
        self.shared.metrics.frame_in(&parsed, line.len());
        match parsed {
            Ok(frame) => self.dispatch(frame, &line, now, ctx),
            Err(ParseError::BadFrame(message)) => self.bad_frame(&message),
            Err(ParseError::BadRequest { message, id }) => {
                self.send_error(ErrorCode::BadRequest, &message, id.as_deref());
            }
        }
    }

    /// Answers input that is not a frame with `error{code:"bad_frame"}`; `max_bad_frames` of
    /// them close the session.
    fn bad_frame(&mut self, message: &str) {
        self.bad_frames += 1;
        tracing::debug!(parent: self.span(), bad_frames = self.bad_frames, %message, "bad frame");
        self.send_error(ErrorCode::BadFrame, message, None);
        if self.bad_frames >= self.shared.config.max_bad_frames {
            self.close(ByeReason::ProtocolError, None);
        }
    }

    /// Records a sign of life that is not a frame: a WebSocket ping or pong.
    fn alive(&mut self) {
        if let Some(hb) = &mut self.heartbeat {
            hb.received(Instant::now());
            self.gauge.alive(hb.dead_by());
        }
    }

    /// Applies the per-session frame rate limit: a frame over the rate is dropped with
    /// `error{code:"rate_limited"}`; `max_rate_violations` in a row close the session.
    fn within_rate(&mut self) -> bool {
        let Some(rate) = &self.rate else {
            return true;
        };
        if rate.check().is_ok() {
            self.rate_violations = 0;
            return true;
        }
        self.rate_violations += 1;
        self.shared.metrics.limit_hit(Limit::MessageRate);
        if self.rate_violations == 1 {
            tracing::info!(parent: self.span(), session = %self.wire_id, "rate limit reached");
        }
        self.send_error(ErrorCode::RateLimited, "too many frames; slow down", None);
        if self.rate_violations >= self.shared.config.limits.max_rate_violations {
            self.close(ByeReason::RateLimited, None);
        }
        false
    }

    /// Refuses a publish or send whose `message` would be longer than the `max_frame` this
    /// server announced: nobody could be sent it.
    fn fits(&self, message_len: usize, id: Option<&str>) -> bool {
        let max = self.shared.config.max_frame;
        if message_len <= max + 1 {
            return true;
        }
        let text = format!(
            "the message would be {} bytes, over max_frame ({max})",
            message_len - 1
        );
        self.send_error(ErrorCode::BadRequest, &text, id);
        false
    }

    /// Refuses a room the user's token does not allow.
    fn room_allowed(&self, room: &RoomName, id: Option<&str>) -> bool {
        let allowed = self.room_policy.as_ref().is_none_or(|p| p.allows(room));
        if !allowed {
            tracing::info!(parent: self.span(), session = %self.wire_id, %room, "room not allowed by token");
            self.send_error(
                ErrorCode::Forbidden,
                "your token does not allow this room",
                id,
            );
        }
        allowed
    }

    /// Refuses a recipient the session's `send` policy does not allow.
    fn recipient_allowed(&self, user: &UserName, id: Option<&str>) -> bool {
        let allowed = self.send_policy.as_ref().is_none_or(|p| p.allows(user));
        if !allowed {
            tracing::info!(parent: self.span(), session = %self.wire_id, to = %user, "recipient not allowed");
            self.send_error(ErrorCode::Forbidden, "you may not send to this user", id);
        }
        allowed
    }

    /// Handles a parsed frame that arrived at `now`.
    fn dispatch(
        &mut self,
        frame: Inbound<'_>,
        line: &Bytes,
        now: Instant,
        ctx: &mut Context<Self>,
    ) {
        let Some(user) = self.user.clone() else {
            return self.dispatch_before_hello(frame, ctx);
        };
        match frame {
            Inbound::Ping(ping) => {
                with_line(&Outbound::Pong { seq: ping.seq }, |l| {
                    self.outbox.push_slice(l)
                });
            }
            Inbound::Pong(pong) => {
                let rtt = self
                    .heartbeat
                    .as_mut()
                    .and_then(|hb| hb.pong(pong.seq, now));
                if let Some(rtt) = rtt {
                    self.gauge.set_rtt(rtt);
                    self.shared.metrics.heartbeat_rtt(rtt);
                }
            }
            Inbound::Hello(_) => {
                self.send_error(ErrorCode::BadRequest, "already said hello", None);
            }
            Inbound::Subscribe(s) => {
                let room = RoomName::checked(s.room);
                if !self.room_allowed(&room, None) {
                    return;
                }
                let msg = registry::Subscribe {
                    id: self.id,
                    room: room.clone(),
                    since: s.since,
                    epoch: s.epoch.map(|e| e.into_owned()),
                };
                self.gate(ctx, msg, move |act, ctx, msg| {
                    act.ask(ctx, msg, move |act, _, cursor| {
                        if let Some(cursor) = cursor {
                            act.rooms.get_or_insert_default().insert(room, cursor);
                        }
                    });
                });
            }
            Inbound::Unsubscribe(u) => {
                let room = RoomName::checked(u.room);
                self.leave_room(&room);
                let msg = registry::Unsubscribe { id: self.id, room };
                self.ask(ctx, msg, |_, _, ()| {});
            }
            Inbound::Publish(p) => {
                let room = RoomName::checked(p.room);
                if !self.room_allowed(&room, p.id.as_deref()) {
                    return;
                }
                let len = message_len(Some(&room), Some(&user), p.data, p.id.as_deref());
                if !self.fits(len, p.id.as_deref()) {
                    return;
                }
                let msg = registry::Publish {
                    session: Some(self.id),
                    room,
                    from: Some(user),
                    data: p.data.to_owned(),
                    id: p.id.map(FrameId::checked),
                };
                // The registry queues the ack or the error itself.
                self.gate(ctx, msg, |act, ctx, msg| {
                    let id = msg.id.clone();
                    act.ask_for(ctx, msg, id, |_, _, _| {});
                });
            }
            Inbound::Send(s) => {
                let to = UserName::checked(s.to);
                if !self.recipient_allowed(&to, s.id.as_deref()) {
                    return;
                }
                let len = message_len(None, Some(&user), s.data, s.id.as_deref());
                if !self.fits(len, s.id.as_deref()) {
                    return;
                }
                let msg = registry::SendTo {
                    session: Some(self.id),
                    from: Some(user),
                    to,
                    data: s.data.to_owned(),
                    id: s.id.map(FrameId::checked),
                };
                self.gate(ctx, msg, |act, ctx, msg| {
                    let id = msg.id.clone();
                    act.ask_for(ctx, msg, id, |_, _, _| {});
                });
            }
            Inbound::Bye(bye) => {
                tracing::debug!(parent: self.span(), reason = ?bye.reason, "client said bye");
                self.closing = true;
                self.outbox.close_silently(ByeReason::Normal);
            }
            Inbound::Other { kind, id } => match self.shared.handlers.get(&kind) {
                Some(handler) => {
                    let frame = AppFrame {
                        kind: kind.into_owned(),
                        id,
                        line: line.clone(),
                    };
                    handler.handle(self, ctx, frame);
                }
                None => {
                    let message = format!("unknown frame type `{kind}`");
                    self.send_error(ErrorCode::UnknownType, &message, id.as_deref());
                }
            },
        }
    }

    fn dispatch_before_hello(&mut self, frame: Inbound<'_>, ctx: &mut Context<Self>) {
        match frame {
            Inbound::Hello(hello) => {
                tracing::debug!(parent: self.span(), client = hello.client.as_deref(), "hello");
                let requested = hello.heartbeat.as_ref().and_then(|h| h.interval_ms);
                let interval = self.shared.config.grant_heartbeat(requested);
                let (user, expires_in) = match &self.shared.authenticator {
                    Some(auth) => {
                        let verified = match hello.token.as_deref() {
                            Some(token) => auth.verify(token),
                            None => Err(AuthError::Missing),
                        };
                        match verified {
                            Ok(identity) => {
                                self.room_policy = identity.rooms;
                                if identity.send.is_some() {
                                    self.send_policy = identity.send;
                                }
                                (Some(identity.user), Some(identity.expires_in))
                            }
                            Err(error) => {
                                tracing::info!(parent: self.span(), session = %self.wire_id, %error, "authentication failed");
                                self.send_error(ErrorCode::Unauthorized, &error.to_string(), None);
                                return self.close(ByeReason::Unauthorized, None);
                            }
                        }
                    }
                    None => (hello.user.as_deref().map(UserName::checked), None),
                };
                self.gate_connect(ctx, &hello, user, move |act, ctx, user| {
                    act.identify(ctx, user, interval, expires_in)
                });
            }
            Inbound::Ping(ping) => {
                with_line(&Outbound::Pong { seq: ping.seq }, |l| {
                    self.outbox.push_slice(l)
                });
            }
            Inbound::Bye(_) => {
                self.closing = true;
                self.outbox.close_silently(ByeReason::Normal);
            }
            other => {
                let id = match &other {
                    Inbound::Publish(p) => p.id.as_deref(),
                    Inbound::Send(s) => s.id.as_deref(),
                    Inbound::Other { id, .. } => id.as_deref(),
                    _ => None,
                };
                self.send_error(ErrorCode::NotReady, "say hello first", id);
            }
        }
    }

    /// The handshake's last step: the registry indexes the user (and enforces
    /// `max_sessions_per_user`), then `welcome` with the heartbeat `interval` granted to this
    /// client.
    fn identify(
        &mut self,
        ctx: &mut Context<Self>,
        user: UserName,
        interval: Duration,
        expires_in: Option<Duration>,
    ) {
        let msg = registry::Identify {
            id: self.id,
            user: user.clone(),
            welcome: self.welcome_frame(&user, interval),
        };
        self.ask(ctx, msg, move |act, ctx, result| match result {
            Ok(()) => {
                act.welcomed(user, interval, ctx);
                if let Some(expires_in) = expires_in {
                    ctx.run_later(expires_in, |act, _| {
                        tracing::info!(parent: act.span(), session = %act.wire_id, "token expired");
                        act.send_error(ErrorCode::Unauthorized, "token expired", None);
                        act.close(ByeReason::Unauthorized, None);
                    });
                }
            }
            Err(RegistryError::UserLimit) => {
                act.send_error(
                    ErrorCode::Forbidden,
                    "too many sessions for this user",
                    None,
                );
                act.close(ByeReason::TooManyConnections, None);
            }
            Err(RegistryError::Draining) => act.close(ByeReason::Shutdown, None),
            Err(RegistryError::UnknownSession) => {
                act.send_error(ErrorCode::Internal, "session lost by the registry", None);
                act.close(ByeReason::Normal, None);
            }
            Err(RegistryError::Broker(error)) => {
                // The user index could not be checked: nothing was admitted.
                tracing::warn!(parent: act.span(), %error, "hello refused: store unavailable");
                act.send_error(
                    ErrorCode::Unavailable,
                    "the message store is unavailable; try again later",
                    None,
                );
                let reconnect_ms = act.shared.config.shutdown_reconnect.as_millis() as u64;
                act.close(ByeReason::Shutdown, Some(reconnect_ms));
            }
        });
    }

    /// Completes the handshake with the heartbeat `interval` granted to this client.
    fn welcome_frame(&self, user: &UserName, interval: Duration) -> Bytes {
        let config = &self.shared.config;
        Outbound::Welcome {
            session: &self.wire_id,
            user,
            heartbeat: HeartbeatInfo {
                interval_ms: interval.as_millis() as u64,
                max_missed: config.max_missed,
            },
            max_frame: config.max_frame,
            server: &config.server_name,
        }
        .encode()
    }

    /// The registry admitted the session and queued its `welcome`.
    fn welcomed(&mut self, user: UserName, interval: Duration, ctx: &mut Context<Self>) {
        if let Some(timer) = self.handshake_timer.take() {
            ctx.cancel_future(timer);
        }
        self.span().record("user", &*user);
        tracing::debug!(parent: self.span(), "welcome");
        self.user = Some(user);
        self.start_heartbeat(interval, ctx);
    }

    /// Pings every `interval` from a random first tick, so that connections accepted together
    /// do not ping together. The first tick falls on the server's tick grid, and so do all
    /// the others: a worker wakes once for every session whose tick falls in the same slot.
    fn start_heartbeat(&mut self, interval: Duration, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let heartbeat = Heartbeat::new(interval, self.shared.config.max_missed, now);
        self.gauge.alive(heartbeat.dead_by());
        self.heartbeat = Some(heartbeat);
        let first = self
            .shared
            .on_tick_grid(now + interval.mul_f64(fastrand::f64()), interval);
        ctx.run_interval_at(first, interval, |act, ctx| act.on_tick(ctx));
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let now = Instant::now();
        if self
            .registry_lost
            .is_some_and(|since| now.duration_since(since) > self.shared.config.dead_after())
        {
            tracing::warn!(parent: self.span(), session = %self.wire_id, "no registry reachable; closing");
            return self.registry_gone();
        }
        self.sync_registry(ctx);
        let Some(hb) = &mut self.heartbeat else {
            return;
        };
        match hb.tick(now) {
            Tick::Ping { seq, missed } => {
                if missed > 0 {
                    // (Zero is there already: every frame that resets the count resets the gauge.)
                    self.gauge.set_missed(missed);
                    self.shared.metrics.heartbeat_missed();
                    tracing::debug!(parent: self.span(), missed, "heartbeat missed");
                }
                with_line(&Outbound::Ping { seq }, |l| self.outbox.push_ping(l));
            }
            Tick::Skip => {}
            Tick::Dead { missed } => {
                // Not waited for past its bound, whatever is queued for it.
                let dead_by = hb.dead_by();
                self.gauge.set_missed(missed);
                self.shared.metrics.heartbeat_missed();
                tracing::info!(parent: self.span(), session = %self.wire_id, missed, "peer silent too long");
                self.close_by(ByeReason::HeartbeatTimeout, None, Some(dead_by));
            }
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(parent: self.span(), "connected");
        let connect = self.connect_message(ctx);
        let reconnect_ms = self.shared.config.shutdown_reconnect.as_millis() as u64;
        self.ask(ctx, connect, move |act, _, result| {
            if result.is_err() {
                act.close(ByeReason::Shutdown, Some(reconnect_ms));
            }
        });
        if let Some(age) = self.shared.config.limits.jittered_max_age() {
            ctx.run_later(age, move |act, _| {
                let hint = fastrand::u64(0..=reconnect_ms.max(1));
                act.close(ByeReason::MaxAge, Some(hint));
            });
        }
        let timeout = self.shared.config.handshake_timeout;
        self.gauge.set_dead_by(Instant::now() + timeout);
        self.handshake_timer = Some(ctx.run_later(timeout, |act, _| {
            if act.user.is_none() {
                act.close(ByeReason::HandshakeTimeout, None);
            }
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        tracing::debug!(parent: self.span(), "session ended");
        if let Some(panic) = panics::take() {
            // The actor was dropped after a panic in one of its handlers: this connection
            // alone ends.
            tracing::error!(parent: self.span(), session = %self.wire_id, %panic, "session crashed");
            self.shared.metrics.session_panicked();
            self.outbox.close_silently(ByeReason::Normal);
        }
        self.shared.metrics.closed(self.outbox.closing());
        self.unregister();
    }
}

impl StreamHandler<Result<Incoming, CodecError>> for Session {
    fn handle(&mut self, item: Result<Incoming, CodecError>, ctx: &mut Self::Context) {
        match item {
            Ok(Incoming::Frame(line)) => self.on_line(line, ctx),
            Ok(Incoming::Alive) => self.alive(),
            Err(CodecError::Binary) => {
                if !self.closing && self.outbox.closing().is_none() {
                    self.alive();
                    self.bad_frame(&CodecError::Binary.to_string());
                }
            }
            Err(CodecError::FrameTooLarge(max)) => {
                tracing::info!(parent: self.span(), session = %self.wire_id, max, "frame too large");
                self.close(ByeReason::FrameTooLarge, None);
            }
            Err(CodecError::Protocol(error)) => {
                tracing::info!(parent: self.span(), session = %self.wire_id, %error, "transport protocol error");
                self.close(ByeReason::ProtocolError, None);
            }
            Err(CodecError::Io(error)) => {
                tracing::debug!(parent: self.span(), %error, "read failed");
                self.closing = true;
                self.outbox.close_silently(ByeReason::Normal);
            }
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The peer closed its side: flush what is queued, then end.
        self.closing = true;
        self.outbox.close_silently(ByeReason::Normal);
    }
}

/// The outbox started closing (whoever started it): leave the registry now.
#[derive(Message)]
#[rtype(result = "()")]
struct CloseBegan;

impl Handler<CloseBegan> for Session {
    type Result = ();

    fn handle(&mut self, _: CloseBegan, ctx: &mut Self::Context) {
        self.closing = true;
        self.unregister();
        self.flush(ctx);
    }
}

/// A direct write would block: flush from the session until the socket took everything.
#[derive(Message)]
#[rtype(result = "()")]
struct Blocked;

impl Handler<Blocked> for Session {
    type Result = ();

    fn handle(&mut self, _: Blocked, ctx: &mut Self::Context) {
        self.flush(ctx);
    }
}

impl Handler<registry::RoomDropped> for Session {
    type Result = ();

    /// The registry dropped this session from a room on its own (after a
    /// `unsubscribed{reason:"resync"}`).
    fn handle(&mut self, msg: registry::RoomDropped, _: &mut Self::Context) {
        self.leave_room(&msg.0);
    }
}

impl Handler<RegistryRestarted> for Session {
    type Result = ();

    fn handle(&mut self, _: RegistryRestarted, ctx: &mut Self::Context) {
        self.sync_registry(ctx);
    }
}

impl Handler<RegistryGone> for Session {
    type Result = ();

    fn handle(&mut self, _: RegistryGone, _: &mut Self::Context) {
        self.registry_gone();
    }
}

/// The writer task ended; the session ends with it.
#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone(WriterExit);

impl Handler<WriterDone> for Session {
    type Result = ();

    fn handle(&mut self, msg: WriterDone, ctx: &mut Self::Context) {
        self.writer_done(msg.0, ctx);
    }
}

impl Session {
    /// Runs the outbox's flush in this session's context, unless it runs already (or a writer
    /// task does the writing).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.writer, Writer::Direct(None)) {
            return;
        }
        let flushing = self.outbox.clone().flush(self.shared.config.close_timeout);
        let handle = ctx.spawn(flushing.into_actor(self).map(|flushed, act, ctx| {
            act.writer = Writer::Direct(None);
            if let Flushed::Exit(exit) = flushed {
                act.writer_done(exit, ctx);
            }
        }));
        self.writer = Writer::Direct(Some(handle));
    }

    /// The socket is closed; the session ends with it.
    fn writer_done(&mut self, exit: WriterExit, ctx: &mut Context<Self>) {
        match exit {
            WriterExit::Closed(reason) => {
                tracing::info!(parent: self.span(), session = %self.wire_id, %reason, "closed")
            }
            WriterExit::TimedOut(reason) => {
                tracing::warn!(parent: self.span(), session = %self.wire_id, %reason, "closed before the peer took its queued frames")
            }
            WriterExit::Failed(error) => {
                tracing::info!(parent: self.span(), session = %self.wire_id, %error, "connection lost")
            }
        }
        ctx.stop();
    }
}
#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod tests {
    use actix::dev::ContextFut;

    #[test]
    fn a_session_task_fits_in_768_bytes() {
        // tokio rounds a task's cell up to 128 bytes (its header is cache-line aligned); with
        // about 104 bytes of its own around the future, an actor future over 664 bytes costs
        // every connection 128 bytes more (BENCHMARKS.md, per-connection cost).
        let future =
            std::mem::size_of::<ContextFut<super::Session, actix::Context<super::Session>>>();
        assert!(
            future <= 664,
            "the session's actor future is {future} bytes"
        );
    }
}
