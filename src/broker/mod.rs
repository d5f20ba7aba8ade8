//! The broker seam: sequencing, history, dedupe and the encoded message that every
//! subscriber receives.
//!
//! The [`Registry`](crate::Registry) knows which local sessions are in which room; the
//! [`Broker`] owns everything about a room's *stream*: its `seq`, its `epoch`, the bounded
//! history used for `since` recovery, and publish-id dedupe. The trait is async and returns
//! owned results so that an implementation may live elsewhere (a later Redis broker lets
//! several heartwire nodes share rooms); [`MemoryBroker`] is the embedded default and answers
//! at once.

mod memory;

pub use memory::{HistoryLimits, MemoryBroker};

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{ready, LocalBoxFuture};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::names::{FrameId, RoomName, UserName};

/// A broker call's result.
pub type BrokerFuture<T> = LocalBoxFuture<'static, Result<T, BrokerError>>;

/// A broker could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker: {0}")]
pub struct BrokerError(pub String);

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

/// The outcome of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// The seq the message got (for a duplicate: the seq it got the first time).
    pub seq: u64,
    /// The `message` frame, encoded once and shared by every subscriber.
    pub frame: Bytes,
    /// True when the id was already sequenced: nothing new to deliver.
    pub duplicate: bool,
}

/// What a subscriber needs before it goes live.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The room's latest seq (0 when it has none).
    pub seq: u64,
    /// The room's current epoch.
    pub epoch: Arc<str>,
    /// Encoded `message` frames with `seq > since`, in order.
    pub frames: Vec<Bytes>,
    /// With `since`: whether every message after it was replayed.
    pub recovered: Option<bool>,
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

/// Sequencing, history and dedupe of rooms.
///
/// Calls for one room are made in order and each completes before the next is made, so an
/// implementation needs no reordering of its own.
pub trait Broker: 'static {
    /// Sequences a message (or recognises a duplicate id) and returns its encoded frame.
    fn publish(&self, request: PublishRequest) -> BrokerFuture<Published>;
    /// Reads what a subscriber with `since`/`epoch` missed, and the room's position.
    fn replay(&self, room: &str, since: Option<u64>, epoch: Option<&str>) -> BrokerFuture<Replay>;
    /// The registry no longer has local subscribers in `room`: its stream may be forgotten
    /// once its history is gone.
    fn release(&self, room: &str);
    /// Periodic upkeep (expiring history); called by the registry's sweep.
    fn maintain(&self);
    /// The room's stream position and history length, without creating the room; `None` when
    /// the broker does not know the room (or cannot tell: the default).
    fn room_stream(&self, room: &str) -> BrokerFuture<Option<RoomStream>> {
        let _ = room;
        Box::pin(ready(Ok(None)))
    }
    /// Totals over every room; `None` when the broker cannot tell (the default).
    fn history_totals(&self) -> BrokerFuture<Option<HistoryTotals>> {
        Box::pin(ready(Ok(None)))
    }
}
