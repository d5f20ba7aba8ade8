//! The [`Client`] actor: one connection at a time, and the state that outlives it.
//!
//! The actor runs under [`actix::Supervisor`]. A connection's whole life (dial, `hello`,
//! `welcome`, heartbeat watch, reads) happens in futures and streams attached to the actor's
//! context; when the connection is lost the actor calls `ctx.stop()`, which drops all of them
//! at once, and the supervisor restarts it. The `restarting` hook draws the next backoff
//! delay, and `started` dials again after it. Everything that must survive a connection lives
//! in the struct, which the supervisor keeps: the subscriptions with their last seq and epoch
//! ([`Rooms`]), the frames waiting for an answer ([`Outgoing`]), the backoff, the undelivered
//! events. Three actix traps shape the code:
//!
//! - the supervisor restarts an actor only on `ctx.stop()`, never on a panic, so nothing here
//!   unwraps network or configuration data;
//! - `run_interval` ticks burst after a stall, so the dead-server check is a single timer
//!   re-armed to a deadline computed from the `Instant` of the last received frame;
//! - `actix::io::FramedWrite` buffers without limit, so writes go through the crate's bounded
//!   [`Outbox`] and its writer task, and the number of unanswered frames on the wire is capped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
#[cfg(feature = "tls")]
use tokio_rustls::client::TlsStream;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::codec::FramedRead;
#[cfg(feature = "tls")]
use tokio_util::either::Either;

use super::backoff::Backoff;
use super::config::ClientConfig;
#[cfg(feature = "tls")]
use super::config::ClientTls;
use super::error::ClientError;
use super::event::{ClientEvent, DisconnectReason, EventSink, Flush};
use super::frames::{ClientFrame, ErrorFrame, HeartbeatRequest, ServerFrame, Welcome};
use super::outgoing::{Kind, Outgoing, Reply};
use super::rooms::{Delivery, Rooms};
use crate::names::{MAX_ID_LEN, MAX_ROOM_LEN, MAX_USER_LEN};
use crate::outbox::{Outbox, WriterExit};
use crate::protocol::codec::{Line, SkippingLineCodec};
use crate::protocol::{encode_line, ByeReason};

/// A connection to the server: plain TCP or TLS over it.
#[cfg(feature = "tls")]
type Stream = Either<TcpStream, TlsStream<TcpStream>>;
/// A connection to the server.
#[cfg(not(feature = "tls"))]
type Stream = TcpStream;

/// Puts TLS over `tcp` when the client is configured for it.
#[cfg(feature = "tls")]
async fn secure(tcp: TcpStream, tls: Option<ClientTls>) -> Result<Stream, String> {
    let Some(tls) = tls else {
        return Ok(Stream::Left(tcp));
    };
    let name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| format!("invalid TLS server name {:?}: {e}", tls.server_name))?;
    let stream = tls.connector.connect(name, tcp).await;
    stream
        .map(Stream::Right)
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

/// The answer channel of a queued frame.
pub type ReplyReceiver = oneshot::Receiver<Result<Reply, ClientError>>;

/// The client actor. Start it with [`Client::start`](super::Client::start) or the functions
/// of [`crate::client`]; talk to it through a [`ClientHandle`](super::ClientHandle).
pub struct Client {
    config: ClientConfig,
    /// Prefix of generated ids: random per client, so ids never repeat across processes
    /// (the server dedupes publishes by user, room and id).
    id_prefix: String,
    next_id: u64,
    rooms: Rooms,
    outgoing: Outgoing,
    backoff: Backoff,
    /// Delays before retrying what the server could not take for lack of its message store
    /// (`error{code:"unavailable"}`); reset by the next ack.
    retry: Backoff,
    events: EventSink,
    /// A blocked event delivery is being waited for.
    flushing: bool,
    /// How many times the application held delivery up (and with it, reading the socket).
    stalls: u64,
    conn: Option<Conn>,
    dialing: bool,
    generation: u64,
    /// Connections that completed the handshake.
    connections: u64,
    /// Delay before the next dial, set by `restarting`.
    next_delay: Option<Duration>,
    /// The last `bye.reconnect_ms`, a lower bound on the next delay.
    hint: Option<Duration>,
    /// The frame limit of the server (from `welcome`), for outgoing frames.
    server_max_frame: usize,
    closed: bool,
    span: tracing::Span,
}

struct Conn {
    generation: u64,
    outbox: Arc<Outbox>,
    _writer: AbortOnDrop,
    phase: Phase,
    last_rx: Instant,
    /// `error{code:"unauthorized"}` received during the handshake.
    rejected: Option<String>,
}

enum Phase {
    Handshaking,
    Ready {
        session: String,
        since: Instant,
        /// `(max_missed + 1) × interval`; `None` when the server announced no heartbeat.
        silence_limit: Option<Duration>,
    },
}

/// Aborts the writer task when the connection is dropped.
struct AbortOnDrop(Option<actix_rt::task::JoinHandle<()>>);

impl AbortOnDrop {
    /// Lets the task finish on its own (a polite close) and returns it.
    fn detach(mut self) -> Option<actix_rt::task::JoinHandle<()>> {
        self.0.take()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// A snapshot of the client's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Whether a connection is up (handshake done).
    pub connected: bool,
    /// The session id of the current connection.
    pub session: Option<String>,
    /// Subscribed rooms with their last seq.
    pub rooms: Vec<(String, Option<u64>)>,
    /// Frames waiting for an answer (queued or on the wire).
    pub pending: usize,
    /// Of those, how many are on the wire.
    pub in_flight: usize,
    /// Connections that completed the handshake so far.
    pub connections: u64,
    /// Failed attempts since the backoff was last reset.
    pub attempt: u32,
    /// Whether the client is closed.
    pub closed: bool,
}

impl Client {
    pub(super) fn new(config: ClientConfig, events: EventSink) -> Self {
        let span = tracing::debug_span!("client", addr = %config.addr, user = ?config.user);
        Client {
            id_prefix: format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff),
            next_id: 0,
            rooms: Rooms::default(),
            outgoing: Outgoing::new(config.max_pending, config.max_in_flight),
            backoff: Backoff::new(config.backoff),
            retry: Backoff::new(config.backoff),
            events,
            flushing: false,
            stalls: 0,
            conn: None,
            dialing: false,
            generation: 0,
            connections: 0,
            next_delay: None,
            hint: None,
            server_max_frame: config.max_frame,
            closed: false,
            span,
            config,
        }
    }

    fn ready(&self) -> bool {
        matches!(
            self.conn,
            Some(Conn {
                phase: Phase::Ready { .. },
                ..
            })
        )
    }

    // ----- events -----

    fn emit(&mut self, event: ClientEvent, ctx: &mut Context<Self>) {
        self.events.push(event);
        self.flush(ctx);
    }

    /// Delivers queued events; when the application is behind, suspends the actor (no reads,
    /// no mailbox) until it takes the next one.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing {
            return;
        }
        if let Flush::Blocked(wait) = self.events.try_flush() {
            self.flushing = true;
            self.stalls += 1;
            tracing::trace!(parent: &self.span, backlog = self.events.backlog(), "application is behind; reads paused");
            ctx.wait(wait.into_actor(self).map(|(), act, ctx| {
                act.flushing = false;
                // The socket was not read while waiting: silence in that time proves nothing.
                if let Some(conn) = &mut act.conn {
                    conn.last_rx = conn.last_rx.max(Instant::now());
                }
                act.flush(ctx);
            }));
        }
    }

    // ----- connection lifecycle -----

    fn dial(&mut self, ctx: &mut Context<Self>) {
        if self.closed || self.conn.is_some() || self.dialing {
            return;
        }
        self.dialing = true;
        self.generation += 1;
        let addr = self.config.addr.clone();
        let timeout = self.config.dial_timeout;
        #[cfg(feature = "tls")]
        let tls = self.config.tls.clone();
        tracing::debug!(parent: &self.span, attempt = self.backoff.attempt(), "dialing");
        let connect = async move {
            let dial = async {
                let tcp = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                #[cfg(feature = "tls")]
                return secure(tcp, tls).await;
                #[cfg(not(feature = "tls"))]
                Ok(tcp)
            };
            match tokio::time::timeout(timeout, dial).await {
                Ok(result) => result,
                Err(_) => Err(format!("no connection within {timeout:?}")),
            }
        };
        ctx.spawn(connect.into_actor(self).map(|result, act, ctx| {
            if !act.dialing {
                return;
            }
            match result {
                Ok(stream) => act.on_tcp(stream, ctx),
                Err(e) => act.lost(DisconnectReason::ConnectFailed(e), ctx),
            }
        }));
    }

    fn on_tcp(&mut self, stream: Stream, ctx: &mut Context<Self>) {
        self.dialing = false;
        let (read, write) = tokio::io::split(stream);
        // The window caps unanswered frames, so the outbox needs room for the window's frames
        // plus control frames; past that the server is not reading and the connection ends.
        let budget = self.config.outbound_budget.saturating_add(
            self.config
                .max_in_flight
                .saturating_mul(self.config.max_frame + 1),
        );
        let outbox = Outbox::new(budget);
        let generation = self.generation;
        let addr = ctx.address();
        let writer = outbox.clone().run_writer(write, Duration::from_secs(2));
        let writer = actix_rt::spawn(async move {
            let exit = writer.await;
            // One message per connection: `do_send` cannot pile up here.
            addr.do_send(WriterDone { generation, exit });
        });
        ctx.add_stream(FramedRead::new(
            read,
            SkippingLineCodec::new(self.config.max_frame),
        ));
        let hello = ClientFrame::Hello {
            user: self.config.user.as_deref(),
            token: self.config.token.as_deref(),
            client: self.config.client_name.as_deref(),
            heartbeat: self.config.heartbeat.map(|interval| HeartbeatRequest {
                interval_ms: interval.as_millis().try_into().unwrap_or(u64::MAX),
            }),
        };
        outbox.push(hello.encode());
        self.conn = Some(Conn {
            generation,
            outbox,
            _writer: AbortOnDrop(Some(writer)),
            phase: Phase::Handshaking,
            last_rx: Instant::now(),
            rejected: None,
        });
        ctx.run_later(self.config.handshake_timeout, move |act, ctx| {
            let waiting = matches!(
                &act.conn,
                Some(c) if c.generation == generation && matches!(c.phase, Phase::Handshaking)
            );
            if waiting {
                act.lost(DisconnectReason::HandshakeTimeout, ctx);
            }
        });
    }

    fn on_welcome(&mut self, welcome: Welcome, ctx: &mut Context<Self>) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        let interval = Duration::from_millis(welcome.heartbeat.interval_ms);
        let silence_limit = (!interval.is_zero())
            .then(|| interval * welcome.heartbeat.max_missed.saturating_add(1));
        conn.phase = Phase::Ready {
            session: welcome.session.clone(),
            since: Instant::now(),
            silence_limit,
        };
        if let Some(max) = welcome.max_frame {
            self.server_max_frame = max;
        }
        self.connections += 1;
        tracing::debug!(parent: &self.span, session = %welcome.session, ?silence_limit, "connected");
        self.emit(
            ClientEvent::Connected {
                session: welcome.session,
                user: welcome.user,
                reconnects: self.connections - 1,
            },
            ctx,
        );
        let names: Vec<String> = self.rooms.names().map(str::to_owned).collect();
        for room in names {
            self.send_subscribe(&room);
        }
        self.pump();
        if silence_limit.is_some() {
            self.watch_silence(ctx);
        }
    }

    /// Arms one timer for the moment the server would have been silent too long.
    fn watch_silence(&mut self, ctx: &mut Context<Self>) {
        let Some(Conn {
            last_rx,
            phase:
                Phase::Ready {
                    silence_limit: Some(limit),
                    ..
                },
            ..
        }) = &self.conn
        else {
            return;
        };
        let now = Instant::now();
        let deadline = *last_rx + *limit;
        if now >= deadline {
            let silent_ms = now.saturating_duration_since(*last_rx).as_millis() as u64;
            tracing::debug!(parent: &self.span, silent_ms, "server silent too long");
            return self.lost(DisconnectReason::ServerSilent { silent_ms }, ctx);
        }
        ctx.run_later(deadline - now, |act, ctx| act.watch_silence(ctx));
    }

    /// The connection (or the attempt) is over: settle the state and let the supervisor
    /// restart the actor, which reconnects after the next backoff delay.
    fn lost(&mut self, reason: DisconnectReason, ctx: &mut Context<Self>) {
        if self.conn.is_none() && !self.dialing {
            return;
        }
        self.dialing = false;
        if let Some(conn) = self.conn.take() {
            if let Phase::Ready { since, .. } = conn.phase {
                self.backoff.connection_ended(since.elapsed());
            }
        }
        self.hint = match &reason {
            DisconnectReason::Bye {
                reconnect_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        };
        self.rooms.connection_lost();
        self.outgoing.connection_lost();
        tracing::debug!(parent: &self.span, %reason, "disconnected");
        let fatal = matches!(reason, DisconnectReason::Unauthorized(_));
        self.emit(ClientEvent::Disconnected { reason }, ctx);
        if fatal {
            self.shut_down(ctx);
        }
        ctx.stop();
    }

    /// Closes for good: fails what waits, ends the event stream.
    fn shut_down(&mut self, ctx: &mut Context<Self>) {
        self.closed = true;
        self.outgoing.fail_all(&ClientError::Closed);
        self.emit(ClientEvent::Closed, ctx);
        self.events.close();
        self.flush(ctx);
    }

    // ----- frames from the server -----

    fn on_line(&mut self, line: Bytes, ctx: &mut Context<Self>) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        conn.last_rx = Instant::now();
        let frame = match ServerFrame::parse(&line) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(parent: &self.span, error = %e, "ignoring a frame");
                return;
            }
        };
        match frame {
            ServerFrame::Welcome(w) => {
                if matches!(conn.phase, Phase::Handshaking) {
                    self.on_welcome(w, ctx);
                }
            }
            ServerFrame::Ping(seq) => {
                conn.outbox.push(ClientFrame::Pong { seq }.encode());
            }
            ServerFrame::Pong => {}
            ServerFrame::Subscribed(s) => {
                let room = s.room.clone();
                let answered = self.rooms.on_subscribed(s);
                for event in answered.events {
                    self.emit(event, ctx);
                }
                if let Some(fetch) = answered.fetch {
                    self.fetch(room, fetch, ctx);
                }
            }
            ServerFrame::Unsubscribed(u) => {
                if u.reason.as_deref() == Some("resync") && self.rooms.position(&u.room).is_some() {
                    // The server could not go on without a hole: resume from our position;
                    // the answer's `recovered` tells (and a gap is reported) if anything is lost.
                    tracing::info!(parent: &self.span, room = %u.room, "server asked to resync");
                    self.send_subscribe(&u.room);
                } else {
                    self.emit(ClientEvent::Unsubscribed { room: u.room }, ctx);
                }
            }
            ServerFrame::Message(m) => {
                if let Delivery::Deliver(events) = self.rooms.on_message(m) {
                    for event in events {
                        self.emit(event, ctx);
                    }
                }
            }
            ServerFrame::Ack(ack) => {
                let frame = serde_json::from_slice(&line).unwrap_or(serde_json::Value::Null);
                if !self.outgoing.ack(&ack, frame) {
                    tracing::debug!(parent: &self.span, id = %ack.id, "ack for nothing pending");
                }
                self.retry.reset();
                self.pump();
            }
            ServerFrame::Error(e)
                if e.code == "unavailable" && matches!(conn.phase, Phase::Ready { .. }) =>
            {
                self.on_unavailable(e, ctx);
            }
            ServerFrame::Error(e) => {
                if e.code == "unauthorized" && matches!(conn.phase, Phase::Handshaking) {
                    conn.rejected = Some(e.message);
                } else if self.outgoing.error(&e) {
                    self.pump();
                } else {
                    tracing::debug!(parent: &self.span, code = %e.code, message = %e.message, "server error");
                    self.emit(
                        ClientEvent::ServerError {
                            code: e.code,
                            message: e.message,
                        },
                        ctx,
                    );
                }
            }
            ServerFrame::Bye(bye) => {
                let reason = match conn.rejected.take() {
                    Some(message) => DisconnectReason::Unauthorized(message),
                    None => DisconnectReason::Bye {
                        reason: bye.reason.unwrap_or_default(),
                        reconnect_ms: bye.reconnect_ms,
                    },
                };
                self.lost(reason, ctx);
            }
            ServerFrame::Other { kind, id, frame } => {
                let answered = id.as_deref().is_some_and(|id| {
                    self.outgoing.resolve(
                        id,
                        Ok(Reply {
                            kind: kind.clone(),
                            frame: frame.clone(),
                        }),
                    )
                });
                if answered {
                    self.pump();
                } else {
                    self.emit(ClientEvent::Frame { kind, frame }, ctx);
                }
            }
        }
    }

    /// The server could not reach its message store, and did nothing. A publish is written
    /// again after a delay with the same id (the server dedupes it, so it is sequenced once);
    /// an answer without an id is a `subscribe` that failed, so the rooms still waiting for
    /// `subscribed` are subscribed again after the delay. Other frames fail with the error.
    fn on_unavailable(&mut self, e: ErrorFrame, ctx: &mut Context<Self>) {
        let delay = self.retry.next_delay(Some(self.config.backoff.initial / 2));
        let generation = self.generation;
        match e.id.as_deref() {
            Some(id) if self.outgoing.defer(id, Instant::now() + delay) => {
                tracing::debug!(parent: &self.span, id, in_ms = delay.as_millis() as u64,
                    "server's store unavailable; publish deferred");
                ctx.run_later(delay, |act, _| act.pump());
            }
            Some(_) => {
                self.outgoing.error(&e);
                self.pump();
            }
            None => {
                tracing::debug!(parent: &self.span, in_ms = delay.as_millis() as u64,
                    "server's store unavailable; pending subscriptions retried");
                ctx.run_later(delay, move |act, _| {
                    let current = act
                        .conn
                        .as_ref()
                        .is_some_and(|c| c.generation == generation);
                    if current {
                        for room in act.rooms.pending() {
                            act.send_subscribe(&room);
                        }
                    }
                });
                self.emit(
                    ClientEvent::ServerError {
                        code: e.code,
                        message: e.message,
                    },
                    ctx,
                );
            }
        }
    }

    // ----- frames to the server -----

    fn send_subscribe(&mut self, room: &str) {
        let Some((since, epoch)) = self.rooms.subscribe_args(room) else {
            return;
        };
        if let Some(conn) = &self.conn {
            let frame = ClientFrame::Subscribe {
                room,
                since,
                epoch: epoch.as_deref(),
            };
            conn.outbox.push(frame.encode());
        }
    }

    /// Fetches what `room`'s new epoch retains: `subscribe` again, now with `since: 0` and the
    /// new epoch (see [`Rooms`]), and watch for the answer.
    fn fetch(&mut self, room: String, fetch: u64, ctx: &mut Context<Self>) {
        tracing::debug!(parent: &self.span, room, "new epoch: fetching its retained history");
        self.send_subscribe(&room);
        self.watch_fetch(room, fetch, self.stalls, ctx);
    }

    /// Gives up a fetch that got no answer within `request_timeout` (the server may have
    /// dropped the `subscribe`, e.g. as rate-limited), so that the room's held messages are
    /// not held forever. Time the application held the client up does not count: the answer
    /// may be sitting unread in the socket.
    fn watch_fetch(&mut self, room: String, fetch: u64, stalls: u64, ctx: &mut Context<Self>) {
        let generation = self.generation;
        ctx.run_later(self.config.request_timeout, move |act, ctx| {
            let current = act.conn.as_ref().is_some_and(|c| c.generation == generation);
            if !current || !act.rooms.fetch_pending(&room, fetch) {
                return;
            }
            if act.flushing || act.stalls != stalls {
                return act.watch_fetch(room, fetch, act.stalls, ctx);
            }
            tracing::warn!(parent: &act.span, room, "no answer to the history fetch; delivering what is held");
            for event in act.rooms.fetch_timed_out(&room, fetch) {
                act.emit(event, ctx);
            }
        });
    }

    /// Writes queued frames within the window, when connected.
    fn pump(&mut self) {
        let Some(conn) = &self.conn else {
            return;
        };
        if !matches!(conn.phase, Phase::Ready { .. }) {
            return;
        }
        let outbox = &conn.outbox;
        self.outgoing.pump(|line| outbox.push(line.clone()));
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.id_prefix, self.next_id)
    }

    fn queue(
        &mut self,
        id: Option<String>,
        kind: Kind,
        encode: impl FnOnce(&str) -> Result<Bytes, ClientError>,
    ) -> Result<(String, ReplyReceiver), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        let id = match id {
            Some(id) if id.is_empty() || id.len() > MAX_ID_LEN => {
                return Err(ClientError::Invalid(format!(
                    "id must be 1 to {MAX_ID_LEN} bytes"
                )))
            }
            Some(id) => id,
            None => self.new_id(),
        };
        let line = encode(&id)?;
        let size = line.len().saturating_sub(1);
        if size > self.server_max_frame {
            return Err(ClientError::TooLarge {
                size,
                max: self.server_max_frame,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.outgoing.push(id.clone(), kind, line, Some(tx))?;
        self.pump();
        Ok((id, rx))
    }
}

fn check_room(room: &str) -> Result<(), ClientError> {
    if room.is_empty() || room.len() > MAX_ROOM_LEN {
        return Err(ClientError::Invalid(format!(
            "room must be 1 to {MAX_ROOM_LEN} bytes"
        )));
    }
    Ok(())
}

impl Actor for Client {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.config.mailbox.max(1));
        // A restart dropped any pending wait: deliver what is still queued.
        self.flushing = false;
        self.flush(ctx);
        if self.closed {
            return;
        }
        match self.next_delay.take() {
            Some(delay) if !delay.is_zero() => {
                ctx.run_later(delay, |act, ctx| act.dial(ctx));
            }
            _ => self.dial(ctx),
        }
    }
}

impl Supervised for Client {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        let delay = self.backoff.next_delay(self.hint.take());
        self.next_delay = Some(delay);
        let in_ms = delay.as_millis() as u64;
        tracing::debug!(parent: &self.span, in_ms, attempt = self.backoff.attempt(), "reconnecting");
        self.emit(
            ClientEvent::Reconnecting {
                in_ms,
                attempt: self.backoff.attempt(),
            },
            ctx,
        );
    }
}

impl StreamHandler<Result<Line, std::io::Error>> for Client {
    fn handle(&mut self, item: Result<Line, std::io::Error>, ctx: &mut Context<Self>) {
        match item {
            Ok(Line::Frame(line)) => self.on_line(line, ctx),
            Ok(Line::TooLarge) => {
                let max = self.config.max_frame;
                tracing::warn!(parent: &self.span, max, "skipped a frame from the server over max_frame");
                let event = ClientEvent::ServerError {
                    code: "frame_too_large".into(),
                    message: format!("the server sent a frame longer than {max} bytes; skipped"),
                };
                self.emit(event, ctx);
            }
            Err(e) => self.lost(DisconnectReason::Io(e.to_string()), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.conn.is_some() {
            self.lost(DisconnectReason::Eof, ctx);
        }
    }
}

/// The writer task of a connection ended.
#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone {
    generation: u64,
    exit: WriterExit,
}

impl Handler<WriterDone> for Client {
    type Result = ();

    fn handle(&mut self, msg: WriterDone, ctx: &mut Context<Self>) {
        if self.conn.as_ref().map(|c| c.generation) != Some(msg.generation) {
            return;
        }
        let reason = match msg.exit {
            WriterExit::Failed(e) => DisconnectReason::Io(e.to_string()),
            WriterExit::Closed(ByeReason::SlowConsumer)
            | WriterExit::TimedOut(ByeReason::SlowConsumer) => DisconnectReason::OutboundFull,
            WriterExit::Closed(_) | WriterExit::TimedOut(_) => DisconnectReason::Eof,
        };
        self.lost(reason, ctx);
    }
}

// ----- the application's messages -----

/// Publishes `data` to `room`; answers with the channel of the `ack`.
#[derive(Message)]
#[rtype(result = "Result<(String, ReplyReceiver), ClientError>")]
pub struct Publish {
    /// Room name.
    pub room: String,
    /// Payload.
    pub data: Box<RawValue>,
    /// Id for the ack and the server's dedupe; generated when `None`.
    pub id: Option<String>,
}

impl Handler<Publish> for Client {
    type Result = Result<(String, ReplyReceiver), ClientError>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        check_room(&msg.room)?;
        self.queue(msg.id, Kind::Publish, |id| {
            Ok(ClientFrame::Publish {
                room: &msg.room,
                data: &msg.data,
                id,
            }
            .encode())
        })
    }
}

/// Sends `data` to every session of user `to`; answers with the channel of the `ack`.
#[derive(Message)]
#[rtype(result = "Result<(String, ReplyReceiver), ClientError>")]
pub struct SendTo {
    /// Recipient user.
    pub to: String,
    /// Payload.
    pub data: Box<RawValue>,
    /// Id for the ack; generated when `None`.
    pub id: Option<String>,
}

impl Handler<SendTo> for Client {
    type Result = Result<(String, ReplyReceiver), ClientError>;

    fn handle(&mut self, msg: SendTo, _: &mut Context<Self>) -> Self::Result {
        if msg.to.is_empty() || msg.to.len() > MAX_USER_LEN {
            return Err(ClientError::Invalid(format!(
                "user must be 1 to {MAX_USER_LEN} bytes"
            )));
        }
        self.queue(msg.id, Kind::Send, |id| {
            Ok(ClientFrame::Send {
                to: &msg.to,
                data: &msg.data,
                id,
            }
            .encode())
        })
    }
}

/// Sends any frame (a JSON object with a string `type`) with an `id` and answers with the
/// channel of the first non-`message` server frame carrying that id.
#[derive(Message)]
#[rtype(result = "Result<(String, ReplyReceiver), ClientError>")]
pub struct Request {
    /// The frame; an `id` is added when it has none.
    pub frame: serde_json::Map<String, serde_json::Value>,
}

impl Handler<Request> for Client {
    type Result = Result<(String, ReplyReceiver), ClientError>;

    fn handle(&mut self, msg: Request, _: &mut Context<Self>) -> Self::Result {
        let mut frame = msg.frame;
        if !frame.get("type").is_some_and(serde_json::Value::is_string) {
            return Err(ClientError::Invalid(
                "a request needs a string `type`".into(),
            ));
        }
        let id = match frame.get("id") {
            None => None,
            Some(serde_json::Value::String(id)) => Some(id.clone()),
            Some(_) => return Err(ClientError::Invalid("`id` must be a string".into())),
        };
        self.queue(id, Kind::Request, move |id| {
            frame.insert("id".into(), serde_json::Value::String(id.to_owned()));
            Ok(encode_line(&frame))
        })
    }
}

/// Joins a room (now, or as soon as connected); later reconnects resume it.
#[derive(Message)]
#[rtype(result = "Result<(), ClientError>")]
pub struct Subscribe {
    /// Room name.
    pub room: String,
}

impl Handler<Subscribe> for Client {
    type Result = Result<(), ClientError>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        check_room(&msg.room)?;
        if self.closed {
            return Err(ClientError::Closed);
        }
        if self.rooms.add(&msg.room) && self.ready() {
            self.send_subscribe(&msg.room);
        }
        Ok(())
    }
}

/// Leaves a room and forgets its position.
#[derive(Message)]
#[rtype(result = "Result<(), ClientError>")]
pub struct Unsubscribe {
    /// Room name.
    pub room: String,
}

impl Handler<Unsubscribe> for Client {
    type Result = Result<(), ClientError>;

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if self.rooms.remove(&msg.room) && self.ready() {
            if let Some(conn) = &self.conn {
                conn.outbox
                    .push(ClientFrame::Unsubscribe { room: &msg.room }.encode());
            }
        }
        Ok(())
    }
}

/// Asks for a [`Status`].
#[derive(Message)]
#[rtype(result = "Status")]
pub struct GetStatus;

impl Handler<GetStatus> for Client {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Status {
            connected: self.ready(),
            session: match &self.conn {
                Some(Conn {
                    phase: Phase::Ready { session, .. },
                    ..
                }) => Some(session.clone()),
                _ => None,
            },
            rooms: self
                .rooms
                .names()
                .map(|r| {
                    let seq = self.rooms.position(r).and_then(|p| p.last_seq);
                    (r.to_owned(), seq)
                })
                .collect(),
            pending: self.outgoing.len(),
            in_flight: self.outgoing.in_flight(),
            connections: self.connections,
            attempt: self.backoff.attempt(),
            closed: self.closed,
        })
    }
}

/// Says `bye`, closes the connection and stops reconnecting. Waiting frames fail with
/// [`ClientError::Closed`]; the event stream ends after [`ClientEvent::Closed`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for Client {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return Box::pin(async {});
        }
        let writer = self.conn.take().and_then(|conn| {
            conn.outbox.close(ByeReason::Normal, None);
            conn._writer.detach()
        });
        let was_connected = writer.is_some() || self.dialing;
        self.dialing = false;
        self.rooms.connection_lost();
        if was_connected {
            self.emit(
                ClientEvent::Disconnected {
                    reason: DisconnectReason::Closed,
                },
                ctx,
            );
        }
        self.shut_down(ctx);
        // Drops the reader and timers; the supervisor's restart finds `closed` and stays idle.
        ctx.stop();
        Box::pin(async move {
            if let Some(writer) = writer {
                let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
            }
        })
    }
}
