//! The node's subscription connection: one dedicated RESP2 pub/sub connection, supervised.
//!
//! A `redis` pub/sub connection never reconnects by itself, and Redis pub/sub is at-most-once:
//! whatever is published while a node is not subscribed is gone for it. So a task of the broker
//! owns the connection and makes every loss visible:
//!
//! - **What is subscribed is a set, not a queue.** [`Subscriptions`] holds the channels the
//!   node wants (rooms with local subscribers, users with local sessions, its own node
//!   channel) and the ones the current connection confirmed; the task reconciles the two
//!   whenever the wanted set changes (`SUBSCRIBE`/`UNSUBSCRIBE` in batches), so an unsubscribe
//!   followed by a subscribe of the same room needs no ordering and no queue grows.
//! - **A lost connection is announced.** When the stream ends, a subscription is not
//!   confirmed in time, or a probe does not come back, the task emits
//!   [`BrokerEvent::Interrupted`], reconnects with capped, jittered backoff, resubscribes every
//!   wanted channel, and emits [`BrokerEvent::Resumed`]: the registry then reads every room's
//!   hole back from history.
//! - **An idle connection is probed end to end** (Centrifugo issue 1189, where a connection
//!   delivered nothing after a failover while everything looked healthy): after
//!   `broker.probe_interval` without a message, the node publishes a probe to its own channel
//!   through the command connection; no message within one more interval restarts the
//!   connection.
//! - **The registry may fall behind, the reader may not.** The crate reads the socket into an
//!   unbounded channel; this task drains it at once into the registry's bounded queue. When
//!   that queue is full, events are dropped and counted, and once it has room again the
//!   registry gets `Interrupted`/`Resumed`, as after a reconnect.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{oneshot, Notify};

use super::Shared;
use crate::broker::BrokerEvent;
use crate::metrics::StoreOp;
use crate::names::{RoomName, UserName};
use crate::protocol::ByeReason;

/// Channels per `SUBSCRIBE`/`UNSUBSCRIBE` command when (re)subscribing many.
const BATCH: usize = 512;
/// Longest pause between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First pause after a failed reconnect attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// What a channel carries.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Room(RoomName),
    User(UserName),
    /// This node's own channel: probes and commands addressed to it.
    Node,
}

/// The channels the node wants, and what the current connection confirmed.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    /// Channel → what it carries, and the generation of the call that wanted it.
    wanted: RefCell<HashMap<String, (Target, u64)>>,
    /// Confirmed on the current connection.
    confirmed: RefCell<HashSet<String>>,
    /// Subscribe calls waiting for their channel's confirmation.
    waiters: RefCell<HashMap<String, Vec<oneshot::Sender<()>>>>,
    next_generation: Cell<u64>,
    changed: Notify,
    /// The connection is up and every wanted channel was subscribed once.
    connected: Cell<bool>,
}

/// A wanted channel: ready at once, or to be confirmed.
pub(super) enum Wanted {
    Ready,
    Pending {
        generation: u64,
        confirmed: oneshot::Receiver<()>,
    },
}

impl Subscriptions {
    pub(super) fn connected(&self) -> bool {
        self.connected.get()
    }

    /// The node wants `channel`.
    pub(super) fn want(&self, channel: String, target: Target) -> Wanted {
        let generation = self.next_generation.get() + 1;
        self.next_generation.set(generation);
        let ready = self.connected.get() && self.confirmed.borrow().contains(&channel);
        self.wanted
            .borrow_mut()
            .insert(channel.clone(), (target, generation));
        if ready {
            return Wanted::Ready;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters
            .borrow_mut()
            .entry(channel)
            .or_default()
            .push(tx);
        self.changed.notify_one();
        Wanted::Pending {
            generation,
            confirmed: rx,
        }
    }

    /// The node no longer wants `channel`.
    pub(super) fn unwant(&self, channel: &str) {
        if self.wanted.borrow_mut().remove(channel).is_some() {
            self.waiters.borrow_mut().remove(channel);
            self.changed.notify_one();
        }
    }

    /// Forgets every room and user channel (the node's own channel stays).
    pub(super) fn unwant_all_but_node(&self) {
        self.wanted
            .borrow_mut()
            .retain(|_, (target, _)| matches!(target, Target::Node));
        self.waiters.borrow_mut().clear();
        self.changed.notify_one();
    }

    /// A subscribe call gave up waiting: its channel is not wanted any more, unless a later
    /// call wants it again.
    pub(super) fn abandon(&self, channel: &str, generation: u64) {
        let mine = self
            .wanted
            .borrow()
            .get(channel)
            .is_some_and(|(_, g)| *g == generation);
        if mine {
            self.unwant(channel);
        }
    }

    fn target(&self, channel: &str) -> Option<Target> {
        self.wanted.borrow().get(channel).map(|(t, _)| t.clone())
    }

    /// What to subscribe and unsubscribe to make the connection match the wanted set.
    fn differences(&self) -> (Vec<String>, Vec<String>) {
        let wanted = self.wanted.borrow();
        let confirmed = self.confirmed.borrow();
        let subscribe = wanted
            .keys()
            .filter(|c| !confirmed.contains(*c))
            .cloned()
            .collect();
        let unsubscribe = confirmed
            .iter()
            .filter(|c| !wanted.contains_key(*c))
            .cloned()
            .collect();
        (subscribe, unsubscribe)
    }

    fn confirm(&self, channels: &[String]) {
        let mut confirmed = self.confirmed.borrow_mut();
        let mut waiters = self.waiters.borrow_mut();
        for channel in channels {
            confirmed.insert(channel.clone());
            for waiter in waiters.remove(channel).into_iter().flatten() {
                let _ = waiter.send(());
            }
        }
    }

    fn lost(&self) {
        self.connected.set(false);
        self.confirmed.borrow_mut().clear();
    }
}

/// A pub/sub connection, split.
pub(super) type Connection = (PubSubSink, PubSubStream);

/// Makes the connection match the wanted set, until it does; an error or a timeout means the
/// connection cannot be trusted.
pub(super) async fn reconcile(shared: &Shared, sink: &mut PubSubSink) -> Result<(), String> {
    let timeout = shared.settings.command_timeout;
    loop {
        let (subscribe, unsubscribe) = shared.subs.differences();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return Ok(());
        }
        for batch in unsubscribe.chunks(BATCH) {
            // Not confirmed from now on: a subscribe of the same channel while this is in
            // flight waits for the next round instead of trusting a subscription being undone.
            {
                let mut confirmed = shared.subs.confirmed.borrow_mut();
                for channel in batch {
                    confirmed.remove(channel);
                }
            }
            match tokio::time::timeout(timeout, sink.unsubscribe(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("unsubscribe failed: {e}")),
                Err(_) => return Err("unsubscribe not confirmed in time".into()),
            }
        }
        for batch in subscribe.chunks(BATCH) {
            match tokio::time::timeout(timeout, sink.subscribe(batch)).await {
                // A channel unwanted meanwhile stays confirmed: the next round unsubscribes it.
                Ok(Ok(())) => shared.subs.confirm(batch),
                Ok(Err(e)) => return Err(format!("subscribe failed: {e}")),
                Err(_) => return Err("subscribe not confirmed in time".into()),
            }
        }
    }
}

/// Keeps the node subscribed for as long as the broker lives. `first` is a connection made
/// (and reconciled) at start, when there is one.
pub(super) async fn supervise(shared: Rc<Shared>, mut first: Option<Connection>) {
    let mut backoff = Duration::ZERO;
    // The first connection follows no loss: nothing to check.
    let mut interrupted = false;
    loop {
        let (mut sink, mut stream) = match first.take() {
            Some(connection) => connection,
            None => {
                let connected = match shared.open_pubsub().await {
                    Ok(mut connection) => match reconcile(&shared, &mut connection.0).await {
                        Ok(()) => Ok(connection),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match connected {
                    Ok(connection) => connection,
                    Err(error) => {
                        shared.metrics.store_error(StoreOp::Connect);
                        backoff = next_backoff(backoff);
                        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64,
                            "cannot subscribe to the message store");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
            }
        };
        backoff = Duration::ZERO;
        shared.commands_ready().await;
        shared.subs.connected.set(true);
        tracing::info!(
            channels = shared.subs.confirmed.borrow().len(),
            "subscribed to the message store"
        );
        if interrupted {
            // Every room is checked for what the node may have missed.
            shared.emit(BrokerEvent::Resumed);
        }
        let reason = run(&shared, &mut sink, &mut stream).await;
        drop((sink, stream));
        shared.subs.lost();
        shared.metrics.pubsub_reconnected();
        tracing::warn!(%reason, "subscription to the message store lost; reconnecting");
        shared.emit(BrokerEvent::Interrupted);
        interrupted = true;
    }
}

fn next_backoff(previous: Duration) -> Duration {
    let ceiling = (previous * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
    // Jitter keeps the nodes of a cluster from reconnecting in step.
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Where the probe of an idle connection is.
enum Probe {
    /// Messages arrive (or the connection is not idle for long yet).
    Idle,
    /// The probe is being published; resolves with how many subscribers got it.
    Publishing(oneshot::Receiver<Result<i64, String>>),
    /// Redis handed the probe to this node's connection at this instant.
    Delivered(Instant),
}

/// Reads the connection until it fails; returns why.
async fn run(shared: &Shared, sink: &mut PubSubSink, stream: &mut PubSubStream) -> String {
    let probe_every = shared.settings.probe_interval;
    let mut tick = tokio::time::interval((probe_every / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_received = Instant::now();
    let mut probe = Probe::Idle;
    loop {
        let publishing = async {
            match &mut probe {
                Probe::Publishing(answer) => answer.await.unwrap_or_else(|_| Err("dropped".into())),
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            // What is already buffered goes first: after the thread was held up, the probe
            // may be waiting in the buffer.
            biased;
            message = stream.next() => match message {
                Some(message) => {
                    last_received = Instant::now();
                    probe = Probe::Idle;
                    shared.dispatch(message.get_channel_name(), message.get_payload_bytes());
                }
                None => return "the connection closed".into(),
            },
            () = shared.subs.changed.notified() => {
                if let Err(error) = reconcile(shared, sink).await {
                    shared.metrics.store_error(StoreOp::Subscribe);
                    return error;
                }
            }
            answer = publishing => match answer {
                Ok(receivers) if receivers > 0 => probe = Probe::Delivered(Instant::now()),
                Ok(_) => {
                    shared.metrics.probe_failed();
                    return "the store has no subscription of this node".into();
                }
                Err(error) => {
                    shared.metrics.probe_failed();
                    return format!("a probe could not be published: {error}");
                }
            },
            _ = tick.tick() => {
                shared.catch_up();
                match probe {
                    Probe::Idle if last_received.elapsed() >= probe_every => {
                        probe = Probe::Publishing(shared.probe());
                    }
                    Probe::Delivered(at) if at.elapsed() >= probe_every => {
                        shared.metrics.probe_failed();
                        return "a probe did not come back".into();
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Shared {
    /// Turns one message into an event for the registry.
    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let Some(target) = self.subs.target(channel) else {
            return;
        };
        let Some((&kind, body)) = payload.split_first() else {
            return;
        };
        let event = match (target, kind) {
            (Target::Room(room), b'm') => publication(room, body),
            (Target::Room(room), b'j') => text(body).map(|user| BrokerEvent::Joined {
                room,
                user: UserName::checked(user),
            }),
            (Target::Room(room), b'l') => text(body).map(|user| BrokerEvent::Left {
                room,
                user: UserName::checked(user),
            }),
            (Target::User(user), b'd') => {
                self.sent_by_another_node(body)
                    .map(|frame| BrokerEvent::Direct {
                        user,
                        frame: Bytes::copy_from_slice(frame),
                    })
            }
            (Target::User(user), b'k') => self
                .sent_by_another_node(body)
                .and_then(text)
                .and_then(ByeReason::from_wire)
                .map(|reason| BrokerEvent::Kick { user, reason }),
            (Target::Node, b'p') => None,
            (Target::Node, b's') => {
                text(body)
                    .and_then(|t| t.split_once(':'))
                    .and_then(|(reason, session)| {
                        Some(BrokerEvent::KickSession {
                            session: session.to_owned(),
                            reason: ByeReason::from_wire(reason)?,
                        })
                    })
            }
            _ => None,
        };
        match event {
            Some(event) => self.emit(event),
            None if kind != b'p' => {
                tracing::debug!(channel, "ignoring a message the node cannot read");
            }
            None => {}
        }
    }

    /// The body of a message another node sent (`<node>:<body>`); `None` for this node's own.
    fn sent_by_another_node<'a>(&self, body: &'a [u8]) -> Option<&'a [u8]> {
        let colon = body.iter().position(|b| *b == b':')?;
        (body[..colon] != *self.settings.node.as_bytes()).then(|| &body[colon + 1..])
    }
}

/// `<seq>:<epoch>:<frame>`.
fn publication(room: RoomName, body: &[u8]) -> Option<BrokerEvent> {
    let mut parts = body.splitn(3, |b| *b == b':');
    let seq = text(parts.next()?)?.parse().ok()?;
    let epoch = text(parts.next()?)?.into();
    let frame = Bytes::copy_from_slice(parts.next()?);
    Some(BrokerEvent::Publication {
        room,
        seq,
        epoch,
        frame,
    })
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|t| !t.is_empty())
}
