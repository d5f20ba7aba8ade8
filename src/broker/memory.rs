//! [`MemoryBroker`]: the embedded default. Each room's stream lives in this process: a
//! bounded history (by count and by age) for `since` recovery, and the ids still in it for
//! publish dedupe. Every call answers at once.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::ready;

use super::{Broker, BrokerFuture, HistoryTotals, PublishRequest, Published, Replay, RoomStream};
use crate::names::{FrameId, UserName};
use crate::protocol::Outbound;

/// Limits of a room's history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Messages kept per room.
    pub size: usize,
    /// Age after which a message is dropped.
    pub ttl: Duration,
}

/// The in-process broker: per-room history in memory, bounded by size and age.
#[derive(Debug)]
pub struct MemoryBroker {
    limits: HistoryLimits,
    rooms: RefCell<HashMap<Arc<str>, RoomLog>>,
}

/// A publish id is unique per publishing user (server pushes have their own namespace).
type DedupeKey = (Option<UserName>, FrameId);

#[derive(Debug)]
struct RoomLog {
    epoch: Arc<str>,
    seq: u64,
    history: VecDeque<Entry>,
    /// `(user, id)` → seq, for the ids still in `history`.
    dedupe: HashMap<DedupeKey, u64>,
    /// Local subscribers may exist: the stream must not restart.
    in_use: bool,
    /// When the last local subscriber left. The stream (seq and epoch) is kept for the
    /// history TTL after that, so a client resuming a quiet room is not told of a false gap.
    released_at: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    at: Instant,
    frame: Bytes,
    key: Option<DedupeKey>,
}

impl RoomLog {
    fn new() -> Self {
        RoomLog {
            epoch: format!("{:016x}", fastrand::u64(..)).into(),
            seq: 0,
            history: VecDeque::new(),
            dedupe: HashMap::new(),
            in_use: false,
            released_at: Some(Instant::now()),
        }
    }

    fn forgettable(&self, limits: HistoryLimits, now: Instant) -> bool {
        !self.in_use
            && self.history.is_empty()
            && self
                .released_at
                .is_none_or(|at| now.saturating_duration_since(at) >= limits.ttl)
    }

    fn expire(&mut self, limits: HistoryLimits, now: Instant) {
        while let Some(front) = self.history.front() {
            let too_many = self.history.len() > limits.size;
            let too_old = now.saturating_duration_since(front.at) > limits.ttl;
            if !(too_many || too_old) {
                break;
            }
            if let Some(Entry { key: Some(key), .. }) = self.history.pop_front() {
                self.dedupe.remove(&key);
            }
        }
    }
}

impl MemoryBroker {
    /// A broker keeping at most `limits` of history per room.
    pub fn new(limits: HistoryLimits) -> Self {
        MemoryBroker {
            limits,
            rooms: RefCell::new(HashMap::new()),
        }
    }

    fn publish_now(&self, req: PublishRequest) -> Published {
        let now = Instant::now();
        let mut rooms = self.rooms.borrow_mut();
        let log = rooms
            .entry(req.room.as_arc().clone())
            .or_insert_with(RoomLog::new);
        log.expire(self.limits, now);
        let key = req.id.clone().map(|id| (req.from.clone(), id));
        if let Some(seq) = key.as_ref().and_then(|k| log.dedupe.get(k)) {
            let seq = *seq;
            let frame = log
                .history
                .iter()
                .find(|e| e.seq == seq)
                .map(|e| e.frame.clone())
                .unwrap_or_default();
            return Published {
                seq,
                frame,
                duplicate: true,
            };
        }
        log.seq += 1;
        let seq = log.seq;
        let frame = Outbound::Message {
            room: Some(req.room.as_str()),
            seq: Some(seq),
            from: req.from.as_deref(),
            data: &req.data,
            id: req.id.as_deref(),
        }
        .encode();
        if self.limits.size > 0 {
            if let Some(key) = &key {
                log.dedupe.insert(key.clone(), seq);
            }
            log.history.push_back(Entry {
                seq,
                at: now,
                frame: frame.clone(),
                key,
            });
            log.expire(self.limits, now);
        }
        Published {
            seq,
            frame,
            duplicate: false,
        }
    }

    fn replay_now(&self, room: &str, since: Option<u64>, epoch: Option<&str>) -> Replay {
        let mut rooms = self.rooms.borrow_mut();
        let log = match rooms.get_mut(room) {
            Some(log) => log,
            None => rooms.entry(Arc::from(room)).or_insert_with(RoomLog::new),
        };
        log.in_use = true;
        log.released_at = None;
        log.expire(self.limits, Instant::now());
        let mut replay = Replay {
            seq: log.seq,
            epoch: log.epoch.clone(),
            frames: Vec::new(),
            recovered: None,
        };
        let Some(since) = since else {
            return replay;
        };
        if epoch.is_some_and(|e| e != &*log.epoch) || since > log.seq {
            replay.recovered = Some(false);
            return replay;
        }
        let first_kept = log.history.front().map_or(log.seq + 1, |e| e.seq);
        replay.frames = log
            .history
            .iter()
            .filter(|e| e.seq > since)
            .map(|e| e.frame.clone())
            .collect();
        replay.recovered = Some(first_kept <= since + 1);
        replay
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, request: PublishRequest) -> BrokerFuture<Published> {
        Box::pin(ready(Ok(self.publish_now(request))))
    }

    fn replay(&self, room: &str, since: Option<u64>, epoch: Option<&str>) -> BrokerFuture<Replay> {
        Box::pin(ready(Ok(self.replay_now(room, since, epoch))))
    }

    fn release(&self, room: &str) {
        let now = Instant::now();
        let mut rooms = self.rooms.borrow_mut();
        if let Some(log) = rooms.get_mut(room) {
            log.in_use = false;
            log.released_at = Some(now);
            if log.forgettable(self.limits, now) {
                rooms.remove(room);
            }
        }
    }

    fn room_stream(&self, room: &str) -> BrokerFuture<Option<RoomStream>> {
        let stream = self.rooms.borrow().get(room).map(|log| RoomStream {
            seq: log.seq,
            epoch: log.epoch.clone(),
            history_len: log.history.len(),
        });
        Box::pin(ready(Ok(stream)))
    }

    fn history_totals(&self) -> BrokerFuture<Option<HistoryTotals>> {
        let rooms = self.rooms.borrow();
        let totals = HistoryTotals {
            rooms: rooms.len(),
            messages: rooms.values().map(|log| log.history.len()).sum(),
        };
        Box::pin(ready(Ok(Some(totals))))
    }

    fn maintain(&self) {
        let now = Instant::now();
        let limits = self.limits;
        self.rooms.borrow_mut().retain(|_, log| {
            log.expire(limits, now);
            !log.forgettable(limits, now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn req(room: &str, from: &str, id: Option<&str>, data: &str) -> PublishRequest {
        PublishRequest {
            room: crate::names::RoomName::checked(room),
            from: Some(UserName::checked(from)),
            data: RawValue::from_string(data.to_owned()).unwrap(),
            id: id.map(FrameId::checked),
        }
    }

    fn broker(size: usize) -> MemoryBroker {
        MemoryBroker::new(HistoryLimits {
            size,
            ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn rooms_nobody_subscribes_to_are_forgotten_with_their_history() {
        let b = MemoryBroker::new(HistoryLimits {
            size: 10,
            ttl: Duration::ZERO,
        });
        b.publish_now(req("lonely", "a", None, "1"));
        std::thread::sleep(Duration::from_millis(2));
        b.maintain();
        assert!(b.rooms.borrow().is_empty());
    }

    #[test]
    fn sequences_gaplessly_and_dedupes_per_user() {
        let b = broker(10);
        assert_eq!(b.publish_now(req("r", "a", Some("1"), "1")).seq, 1);
        assert_eq!(b.publish_now(req("r", "a", None, "2")).seq, 2);
        let dup = b.publish_now(req("r", "a", Some("1"), "1"));
        assert!(dup.duplicate);
        assert_eq!(dup.seq, 1);
        // the same id from another user is another message
        assert_eq!(b.publish_now(req("r", "b", Some("1"), "3")).seq, 3);
        assert_eq!(b.publish_now(req("other", "a", Some("1"), "1")).seq, 1);
    }

    #[test]
    fn replay_reports_recovery_and_epoch_changes() {
        let b = broker(3);
        for i in 0..5 {
            b.publish_now(req("r", "a", None, &i.to_string()));
        }
        let full = b.replay_now("r", None, None);
        assert_eq!((full.seq, full.frames.len(), full.recovered), (5, 0, None));
        let recent = b.replay_now("r", Some(3), Some(&full.epoch));
        assert_eq!((recent.frames.len(), recent.recovered), (2, Some(true)));
        let old = b.replay_now("r", Some(0), None);
        assert_eq!((old.frames.len(), old.recovered), (3, Some(false)));
        let other_epoch = b.replay_now("r", Some(3), Some("nope"));
        assert_eq!(
            (other_epoch.frames.len(), other_epoch.recovered),
            (0, Some(false))
        );
        let current = b.replay_now("r", Some(5), None);
        assert_eq!((current.frames.len(), current.recovered), (0, Some(true)));
    }

    #[test]
    fn released_rooms_keep_their_stream_for_the_ttl_then_restart() {
        let b = broker(0);
        b.publish_now(req("r", "a", None, "1"));
        let before = b.replay_now("r", None, None);
        b.release("r");
        b.maintain();
        let kept = b.replay_now("r", Some(1), Some(&before.epoch));
        assert_eq!(
            (kept.seq, kept.recovered),
            (1, Some(true)),
            "a quiet room resumes without a gap"
        );
        b.release("r");
        let quick = MemoryBroker::new(HistoryLimits {
            size: 0,
            ttl: Duration::ZERO,
        });
        quick.publish_now(req("r", "a", None, "1"));
        let before = quick.replay_now("r", None, None);
        quick.release("r");
        let after = quick.replay_now("r", None, None);
        assert_eq!(after.seq, 0);
        assert_ne!(before.epoch, after.epoch);
    }
}
