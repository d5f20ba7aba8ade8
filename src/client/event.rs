//! What the client tells the application, and how it gets there without unbounded buffers.
//!
//! Events go to an actix [`Recipient`] and/or a [`Stream`] ([`Events`]). Both paths are
//! bounded: when the application falls behind, the client stops reading its socket until the
//! application catches up (see [`EventSink`]), so a slow consumer costs a fixed amount of
//! memory and, eventually, makes the *server* cut the connection as a slow consumer (after
//! which the client resumes from the last seq it delivered: nothing is lost, only delayed).
//! Dropping events instead would silently break the "every message once, in order" promise;
//! `do_send` would ignore the recipient's mailbox capacity and grow without limit.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::prelude::*;
use futures_util::Stream;
use tokio::sync::mpsc;

pub use super::frames::Message;

/// Something that happened to the client.
#[derive(Debug, Clone, PartialEq, actix::Message)]
#[rtype(result = "()")]
pub enum ClientEvent {
    /// The handshake completed: the client is online.
    Connected {
        /// The server's session id for this connection.
        session: String,
        /// The user the server knows us as.
        user: String,
        /// How many connections this client made before this one (0 on the first).
        reconnects: u64,
    },
    /// A room or direct message, each room message delivered once and in `seq` order.
    Message(Message),
    /// The server answered a (re)subscription. Comes after the messages it replayed; when the
    /// room's epoch changed, after the messages of the new epoch the client fetched.
    Subscribed {
        /// Room name.
        room: String,
        /// The room's latest seq at that moment.
        seq: u64,
        /// The room's epoch.
        epoch: String,
        /// `Some(true)`: everything missed while offline was replayed; `Some(false)`: it was
        /// not (a [`ClientEvent::Gap`] came first); `None`: a first subscription.
        recovered: Option<bool>,
    },
    /// The server confirmed an unsubscription.
    Unsubscribed {
        /// Room name.
        room: String,
    },
    /// Messages of a room were missed and cannot be replayed (history too short, or the room's
    /// stream restarted with a new epoch). Never silent: the client always reports this before
    /// delivering anything after the hole. A new epoch is one gap (the rest of the old epoch),
    /// then the new epoch's retained messages from seq 1, or, when its history no longer
    /// starts at 1, a second gap in the new epoch for the seqs it dropped.
    Gap(Gap),
    /// The connection ended (or an attempt to make one failed).
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The client will try to connect again after this delay.
    Reconnecting {
        /// The delay in milliseconds.
        in_ms: u64,
        /// Attempt number since the last connection that stayed up (1-based).
        attempt: u32,
    },
    /// The server reported an error not tied to a pending request. A frame from the server
    /// longer than the client's `max_frame` is skipped and reported here too (code
    /// `frame_too_large`); the connection stays up.
    ServerError {
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// A server frame of a type protocol v1 does not define, not answering a request.
    Frame {
        /// Its `type`.
        kind: String,
        /// The whole frame.
        frame: serde_json::Value,
    },
    /// The client was closed (by [`ClientHandle::close`](super::ClientHandle::close) or
    /// because the server refused it); no more events follow.
    Closed,
}

/// A hole in a room's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Room name.
    pub room: String,
    /// The last seq delivered before the hole (in `previous_epoch`).
    pub last_seen: u64,
    /// The epoch `last_seen` belongs to.
    pub previous_epoch: String,
    /// The room's current epoch (differs from `previous_epoch` when its stream restarted).
    pub epoch: String,
    /// The first seq (in `epoch`) that will be delivered after the hole. In the same epoch,
    /// `last_seen + 1 .. resume_seq` are the missing seqs. With a new epoch it is 1: the client
    /// fetches what the new epoch holds, and reports a second gap (in the new epoch, from
    /// `last_seen` 0) if that no longer starts at seq 1.
    pub resume_seq: u64,
}

impl Gap {
    /// Whether the room's stream restarted (every message after `last_seen` in the old epoch
    /// is lost; the new epoch is delivered from `resume_seq`).
    pub fn epoch_changed(&self) -> bool {
        self.epoch != self.previous_epoch
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch_changed() {
            write!(
                f,
                "room {} restarted (epoch {} -> {}); missed everything after seq {}, resuming at seq {}",
                self.room, self.previous_epoch, self.epoch, self.last_seen, self.resume_seq
            )
        } else {
            write!(
                f,
                "room {}: missed seq {}..{}",
                self.room,
                self.last_seen + 1,
                self.resume_seq.saturating_sub(1)
            )
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The TCP connection could not be made (refused, unreachable, dial timeout).
    ConnectFailed(String),
    /// No `welcome` within the handshake timeout.
    HandshakeTimeout,
    /// Nothing arrived for `(max_missed + 1) × interval`: the server is presumed dead.
    ServerSilent {
        /// How long it had been silent, in milliseconds.
        silent_ms: u64,
    },
    /// The server said `bye`.
    Bye {
        /// `bye.reason`.
        reason: String,
        /// `bye.reconnect_ms`, honoured as a lower bound on the next delay.
        reconnect_ms: Option<u64>,
    },
    /// The server refused the `hello` (`error{code:"unauthorized"}`); the client stops.
    Unauthorized(String),
    /// The server closed the socket without a `bye`.
    Eof,
    /// Reading or writing the socket failed.
    Io(String),
    /// The server sent something that is not protocol v1.
    Protocol(String),
    /// The server stopped reading and the client's outbound budget ran out.
    OutboundFull,
    /// The application closed the client.
    Closed,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            DisconnectReason::HandshakeTimeout => f.write_str("no welcome from the server in time"),
            DisconnectReason::ServerSilent { silent_ms } => {
                write!(f, "server silent for {silent_ms} ms")
            }
            DisconnectReason::Bye {
                reason,
                reconnect_ms: Some(ms),
            } => write!(f, "bye: {reason} (reconnect in at least {ms} ms)"),
            DisconnectReason::Bye { reason, .. } => write!(f, "bye: {reason}"),
            DisconnectReason::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            DisconnectReason::Eof => f.write_str("connection closed by the server"),
            DisconnectReason::Io(e) => write!(f, "i/o error: {e}"),
            DisconnectReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DisconnectReason::OutboundFull => {
                f.write_str("server stopped reading; outbound budget exhausted")
            }
            DisconnectReason::Closed => f.write_str("closed"),
        }
    }
}

/// The client's events as a [`Stream`]. Ends after [`ClientEvent::Closed`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the client is closed and every event was read.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// Where events go.
#[derive(Debug, Default)]
pub struct EventSink {
    stream: Option<mpsc::Sender<ClientEvent>>,
    recipient: Option<Recipient<ClientEvent>>,
    /// Deliveries waiting for room, in order: `(event, to_stream, to_recipient)`.
    backlog: VecDeque<(ClientEvent, bool, bool)>,
    /// Drop the destinations once the backlog is delivered.
    closing: bool,
}

/// Whether [`EventSink::try_flush`] delivered everything.
pub enum Flush {
    /// Nothing is waiting.
    Done,
    /// A destination is full; the future resolves when it took the front event (after which
    /// flushing should be tried again).
    Blocked(std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>),
}

impl EventSink {
    /// A sink with an event stream of `capacity` events, and the stream.
    pub fn with_stream(capacity: usize) -> (mpsc::Sender<ClientEvent>, Events) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Events { rx })
    }

    /// A sink to these destinations.
    pub fn new(
        stream: Option<mpsc::Sender<ClientEvent>>,
        recipient: Option<Recipient<ClientEvent>>,
    ) -> Self {
        EventSink {
            stream,
            recipient,
            backlog: VecDeque::new(),
            closing: false,
        }
    }

    /// Queues an event behind any not yet delivered.
    pub fn push(&mut self, event: ClientEvent) {
        let to_stream = self.stream.is_some();
        let to_recipient = self.recipient.is_some();
        if to_stream || to_recipient {
            self.backlog.push_back((event, to_stream, to_recipient));
        }
    }

    /// Events waiting for the application.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Delivers what it can without waiting.
    pub fn try_flush(&mut self) -> Flush {
        while let Some((event, to_stream, to_recipient)) = self.backlog.front_mut() {
            if *to_stream {
                enum Outcome {
                    Sent,
                    Full,
                    Gone,
                }
                let outcome = match &self.stream {
                    Some(tx) => match tx.try_reserve() {
                        Ok(permit) => {
                            permit.send(event.clone());
                            Outcome::Sent
                        }
                        Err(mpsc::error::TrySendError::Full(())) => Outcome::Full,
                        Err(mpsc::error::TrySendError::Closed(())) => Outcome::Gone,
                    },
                    None => Outcome::Gone,
                };
                match outcome {
                    Outcome::Sent => *to_stream = false,
                    Outcome::Full => {
                        let tx = self.stream.clone();
                        return Flush::Blocked(Box::pin(async move {
                            if let Some(tx) = tx {
                                // The permit is dropped unused: this only waits for room.
                                let _ = tx.reserve().await;
                            }
                        }));
                    }
                    // The application dropped its stream: stop sending there.
                    Outcome::Gone => {
                        self.stream = None;
                        *to_stream = false;
                    }
                }
            }
            if *to_recipient {
                match self.recipient.as_ref().map(|r| r.try_send(event.clone())) {
                    Some(Ok(())) => *to_recipient = false,
                    Some(Err(SendError::Full(event))) => {
                        let recipient = self.recipient.clone();
                        // `send` waits for mailbox room (unlike `do_send`) and then delivers.
                        self.backlog.pop_front();
                        return Flush::Blocked(Box::pin(async move {
                            if let Some(r) = recipient {
                                let _ = r.send(event).await;
                            }
                        }));
                    }
                    Some(Err(SendError::Closed(_))) | None => {
                        self.recipient = None;
                        *to_recipient = false;
                    }
                }
            }
            self.backlog.pop_front();
        }
        if self.closing {
            self.stream = None;
            self.recipient = None;
        }
        Flush::Done
    }

    /// Stops delivering once the backlog is delivered: the stream then ends when the
    /// application has read everything.
    pub fn close(&mut self) {
        self.closing = true;
    }
}
