//! The broker seam: everything about rooms and users that several heartwire nodes must share.
//!
//! The [`Registry`](crate::Registry) of a node knows which of *its* sessions are in which
//! room. The [`Broker`] owns what is shared: each room's stream (its `seq`, its `epoch`, the
//! bounded history used for `since` recovery, publish-id dedupe), presence, the user index
//! for `max_sessions_per_user`, and the paths between nodes (room publications, direct
//! messages, kicks).
//!
//! The trait is shaped for a network store, where every call is a round trip that may fail:
//!
//! - **Publishing is atomic in the store** (dedupe → seq → history → publication, in one
//!   step, the store assigning the seq), and it does not deliver: every node, the publishing
//!   one included, fans out what comes back on its **inbound event stream**
//!   ([`Broker::events`]). A room's publications arrive there in `seq` order.
//! - A node **subscribes** to a room's publications while it has local subscribers, and to a
//!   user's direct messages while it has sessions of that user.
//! - **History reads** return the room's position with the entries, so that the registry can
//!   merge a read with publications that arrived while it was in flight: nothing is lost or
//!   doubled at the seam.
//! - **Failures are reported**, never swallowed: [`BrokerError::Unavailable`] means nothing
//!   was done (clients get `error{code:"unavailable"}` and may resend with the same id), and
//!   an inbound path that broke is announced with [`BrokerEvent::Interrupted`] and
//!   [`BrokerEvent::Resumed`], after which the registry checks every room for holes.
//!
//! [`MemoryBroker`] is the embedded default (one node, answers at once, the same semantics);
//! a Redis broker lets several nodes share everything.

mod config;
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::RedisBroker;
pub use config::BrokerConfig;
pub use memory::{HistoryLimits, MemoryBroker};

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{ready, LocalBoxFuture};
use futures_util::stream::LocalBoxStream;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::names::{FrameId, RoomName, UserName};
use crate::protocol::ByeReason;

/// A broker call's result.
pub type BrokerFuture<T> = LocalBoxFuture<'static, Result<T, BrokerError>>;

/// A broker could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The store could not be reached: nothing was done. Resending later is safe.
    #[error("message store unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("broker: {0}")]
    Failed(String),
}

/// A message to sequence into a room.
#[derive(Debug)]
pub struct PublishRequest {
    /// Room name.
    pub room: RoomName,
    /// Publishing user; `None` for pushes by the server's own API.
    pub from: Option<UserName>,
    /// Payload as raw JSON.
    pub data: Box<RawValue>,
    /// The publisher's id, for dedupe and the ack.
    pub id: Option<FrameId>,
}

/// The outcome of a publish. The message itself reaches subscribers through
/// [`BrokerEvent::Publication`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The seq the message got (for a duplicate: the seq it got the first time).
    pub seq: u64,
    /// The room's epoch that seq belongs to.
    pub epoch: Arc<str>,
    /// True when the id was already sequenced: nothing new was published.
    pub duplicate: bool,
}

/// A room's position and what its history holds after a point, read in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The room's current epoch (created by the read if the room had none).
    pub epoch: Arc<str>,
    /// The room's latest seq (0 when it has none).
    pub top: u64,
    /// Encoded `message` frames with `seq > since`, in order (none without `since`, or when
    /// `since` belongs to another epoch).
    pub entries: Vec<(u64, Bytes)>,
    /// With `since`: whether every message after it in this epoch is in `entries`.
    pub complete: bool,
}

/// What arrives at a node from the store.
#[derive(Debug, Clone)]
pub enum BrokerEvent {
    /// A room message, in `seq` order per room.
    Publication {
        /// Room name.
        room: RoomName,
        /// Its seq.
        seq: u64,
        /// The epoch of that seq.
        epoch: Arc<str>,
        /// The encoded `message` frame.
        frame: Bytes,
    },
    /// A direct message for the local sessions of `user`, sent on another node.
    Direct {
        /// Recipient user.
        user: UserName,
        /// The encoded `message` frame.
        frame: Bytes,
    },
    /// The user's first session anywhere joined the room (presence).
    Joined {
        /// Room name.
        room: RoomName,
        /// The user.
        user: UserName,
    },
    /// The user's last session anywhere left the room (presence).
    Left {
        /// Room name.
        room: RoomName,
        /// The user.
        user: UserName,
    },
    /// Close every local session of `user` (a kick on another node).
    Kick {
        /// The user.
        user: UserName,
        /// The `bye` reason.
        reason: ByeReason,
    },
    /// Close the local session its client knows as `session`, if there is one.
    KickSession {
        /// The `welcome.session` id.
        session: String,
        /// The `bye` reason.
        reason: ByeReason,
    },
    /// The inbound path broke: events may have been lost until [`BrokerEvent::Resumed`].
    Interrupted,
    /// The inbound path works again, with every subscription in place; rooms must be
    /// checked for holes.
    Resumed,
}

/// A room's stream as the broker sees it, for monitoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomStream {
    /// The room's latest seq.
    pub seq: u64,
    /// The room's current epoch.
    pub epoch: Arc<str>,
    /// Messages kept in its history.
    pub history_len: usize,
}

/// What all room histories hold together, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryTotals {
    /// Rooms whose stream the broker keeps.
    pub rooms: usize,
    /// Messages kept, all rooms together.
    pub messages: usize,
}

/// What several nodes share, and the way between them (see the module docs).
///
/// A node calls it from one thread (its registry's arbiter); calls need not be `Send`.
pub trait Broker: 'static {
    /// The node's inbound events. The registry takes it when it starts; a later call (a
    /// registry replacing one that crashed) takes over, and events not yet read by the old
    /// one are the new registry's to recover (from history, through the sessions' cursors).
    fn events(&self) -> LocalBoxStream<'static, BrokerEvent>;

    /// Sequences a message (or recognises a duplicate id), keeps it in the room's history
    /// and publishes it to every node subscribed to the room.
    fn publish(&self, request: PublishRequest) -> BrokerFuture<Published>;

    /// The room's position and the messages after `since` (when given and in `epoch`, or in
    /// the current epoch when `epoch` is `None`).
    fn history(
        &self,
        room: &RoomName,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> BrokerFuture<History>;

    /// Starts receiving the room's publications; resolves once they will arrive.
    fn subscribe_room(&self, room: &RoomName) -> BrokerFuture<()>;

    /// Stops receiving the room's publications (no local subscriber is left).
    fn unsubscribe_room(&self, room: &RoomName);

    /// Starts receiving direct messages for `user` sent on other nodes.
    fn subscribe_user(&self, user: &UserName) -> BrokerFuture<()>;

    /// Stops receiving them (no local session of `user` is left).
    fn unsubscribe_user(&self, user: &UserName);

    /// Delivers a direct message to the sessions of `user` on other nodes; returns how many
    /// such sessions were registered when it was sent (0 for one node).
    fn send_to_others(&self, user: &UserName, frame: Bytes) -> BrokerFuture<usize>;

    /// Closes the sessions of `user` on other nodes; returns how many were registered.
    fn kick_others(&self, user: &UserName, reason: ByeReason) -> BrokerFuture<usize>;

    /// Closes the session its client knows as `session` if another node holds it.
    fn kick_session_others(&self, session: &str, reason: ByeReason) -> BrokerFuture<()>;

    /// A session of `user` with the cluster-unique `member` id subscribed to `room`: the
    /// user's first one anywhere produces [`BrokerEvent::Joined`] on every node.
    fn presence_add(&self, room: &RoomName, user: &UserName, member: &str) -> BrokerFuture<()>;

    /// That session left the room: the user's last one anywhere produces
    /// [`BrokerEvent::Left`] on every node.
    fn presence_remove(&self, room: &RoomName, user: &UserName, member: &str) -> BrokerFuture<()>;

    /// The users present in `room` on every node, sorted.
    fn presence(&self, room: &RoomName) -> BrokerFuture<Vec<UserName>>;

    /// Registers a session of `user` (cluster-unique `member`) if the user has fewer than
    /// `max` (0 = no limit); `false` when the limit is reached.
    fn claim_session(&self, user: &UserName, member: &str, max: usize) -> BrokerFuture<bool>;

    /// Unregisters a session claimed with [`Broker::claim_session`].
    fn release_session(&self, user: &UserName, member: &str);

    /// The node fanned out `seen` in `epoch` but the store's stream of `room` is behind it: the
    /// store lost writes (a shared store restored from an older snapshot). Restarts the room's
    /// stream under a new epoch if it is still in `epoch` and behind `seen`, so that clients
    /// learn of the loss instead of seeing old seqs reused. An in-process store cannot go
    /// back (the default does nothing).
    fn restart_room(&self, room: &RoomName, epoch: &str, seen: u64) -> BrokerFuture<()> {
        let _ = (room, epoch, seen);
        Box::pin(ready(Ok(())))
    }

    /// Whether the store is reachable and the inbound path works (for `/readyz`).
    fn healthy(&self) -> bool {
        true
    }

    /// Periodic upkeep (history expiry, presence refresh); called by the registry's sweep.
    fn maintain(&self) {}

    /// The room's stream position and history length, without creating the room; `None` when
    /// the broker does not know the room (or cannot tell: the default).
    fn room_stream(&self, room: &RoomName) -> BrokerFuture<Option<RoomStream>> {
        let _ = room;
        Box::pin(ready(Ok(None)))
    }

    /// Totals over every room; `None` when the broker cannot tell (the default).
    fn history_totals(&self) -> BrokerFuture<Option<HistoryTotals>> {
        Box::pin(ready(Ok(None)))
    }
}
