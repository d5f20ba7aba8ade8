//! [`MemoryBroker`]: the embedded default, for one node. Each room's stream lives in this
//! process: a bounded history (by count and by age) for `since` recovery, and the ids still in
//! it for publish dedupe; presence and the user index are plain maps. Every call answers at
//! once, and publications and presence events come back through the same kind of inbound
//! stream a shared store provides, so the registry has one code path for both.
//!
//! Nothing here expires on its own, so a registry crash makes claims and presence leases:
//! what the crashed registry's sessions held is remembered at the takeover, each session that
//! registers again asserts its own anew, and the rest (sessions that ended around the crash,
//! whose goodbye died with the old registry's mailbox) is released when the new registry says
//! the sessions had their time ([`Broker::release_not_rejoined`]). Without that, such a user
//! would stay present and count against `max_sessions_per_user` for the life of the process.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::ready;
use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    Broker, BrokerError, BrokerEvent, BrokerFuture, History, HistoryTotals, PublishRequest,
    Published, RoomStream,
};
use crate::names::{FrameId, RoomName, UserName};
use crate::protocol::ByeReason;
use crate::protocol::Outbound;
use crate::small_set::SmallSet;

/// Inbound events that may wait for the registry. The registry reads them between its
/// messages, so the queue stays short; a publish that finds it full is refused as
/// unavailable rather than queued without bound.
const EVENT_QUEUE: usize = 64 * 1024;

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
    rooms: RefCell<HashMap<RoomName, RoomLog>>,
    /// Room → user → the sessions (members) of that user in the room.
    presence: RefCell<HashMap<RoomName, HashMap<UserName, HashSet<String>>>>,
    /// User → its sessions, for `max_sessions_per_user`.
    sessions: RefCell<HashMap<UserName, SmallSet<Box<str>>>>,
    /// What was held when a registry took over and has not been asserted again since.
    not_rejoined: RefCell<NotRejoined>,
    events: RefCell<Option<mpsc::Sender<BrokerEvent>>>,
}

/// Claims and presence left by a registry that crashed, until a session asserts them again.
#[derive(Debug, Default)]
struct NotRejoined {
    /// `(user, member)`.
    claims: HashSet<(UserName, String)>,
    /// `(room, user, member)`.
    presence: HashSet<(RoomName, UserName, String)>,
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
    /// The node receives the room's publications: the stream must not restart.
    subscribed: bool,
    /// When the node stopped receiving it. The stream (seq and epoch) is kept for the
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
            subscribed: false,
            released_at: Some(Instant::now()),
        }
    }

    fn forgettable(&self, limits: HistoryLimits, now: Instant) -> bool {
        !self.subscribed
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

    fn history(&self, since: Option<u64>, epoch: Option<&str>) -> History {
        let mut history = History {
            epoch: self.epoch.clone(),
            top: self.seq,
            entries: Vec::new(),
            complete: false,
        };
        let Some(since) = since else {
            return history;
        };
        if epoch.is_some_and(|e| e != &*self.epoch) || since > self.seq {
            return history;
        }
        let first_kept = self.history.front().map_or(self.seq + 1, |e| e.seq);
        history.entries = self
            .history
            .iter()
            .filter(|e| e.seq > since)
            .map(|e| (e.seq, e.frame.clone()))
            .collect();
        history.complete = first_kept <= since + 1;
        history
    }
}

impl MemoryBroker {
    /// A broker keeping at most `limits` of history per room.
    pub fn new(limits: HistoryLimits) -> Self {
        MemoryBroker {
            limits,
            rooms: RefCell::new(HashMap::new()),
            presence: RefCell::new(HashMap::new()),
            sessions: RefCell::new(HashMap::new()),
            not_rejoined: RefCell::new(NotRejoined::default()),
            events: RefCell::new(None),
        }
    }

    /// A registry takes over: everything held now waits to be asserted again.
    fn take_over(&self) {
        let claims = self
            .sessions
            .borrow()
            .iter()
            .flat_map(|(user, members)| members.iter().map(|m| (user.clone(), m.to_string())))
            .collect();
        let presence = self
            .presence
            .borrow()
            .iter()
            .flat_map(|(room, users)| {
                users.iter().flat_map(move |(user, members)| {
                    members
                        .iter()
                        .map(move |m| (room.clone(), user.clone(), m.clone()))
                })
            })
            .collect();
        *self.not_rejoined.borrow_mut() = NotRejoined { claims, presence };
    }

    fn forget_claim(&self, user: &UserName, member: &str) {
        let mut not_rejoined = self.not_rejoined.borrow_mut();
        if !not_rejoined.claims.is_empty() {
            not_rejoined
                .claims
                .remove(&(user.clone(), member.to_owned()));
        }
    }

    fn forget_presence(&self, room: &RoomName, user: &UserName, member: &str) {
        let mut not_rejoined = self.not_rejoined.borrow_mut();
        if !not_rejoined.presence.is_empty() {
            not_rejoined
                .presence
                .remove(&(room.clone(), user.clone(), member.to_owned()));
        }
    }

    /// Queues an event for the registry, if one listens. Only publishes can find the queue
    /// full (they reserve first); presence events are at most one per subscribe.
    fn emit(&self, event: BrokerEvent) {
        if let Some(tx) = self.events.borrow().as_ref() {
            let _ = tx.try_send(event);
        }
    }

    fn publish_now(&self, req: PublishRequest) -> Result<Published, BrokerError> {
        let events = self.events.borrow();
        // Reserve the event's place first: a publish is either sequenced and delivered, or
        // refused with nothing sequenced.
        let permit = match events.as_ref().map(mpsc::Sender::try_reserve) {
            Some(Ok(permit)) => Some(permit),
            Some(Err(_)) => {
                return Err(BrokerError::Unavailable(
                    "the node's inbound queue is full".into(),
                ))
            }
            None => None,
        };
        let now = Instant::now();
        let mut rooms = self.rooms.borrow_mut();
        let log = rooms.entry(req.room.clone()).or_insert_with(RoomLog::new);
        log.expire(self.limits, now);
        let key = req.id.clone().map(|id| (req.from.clone(), id));
        if let Some(seq) = key.as_ref().and_then(|k| log.dedupe.get(k)) {
            return Ok(Published {
                seq: *seq,
                epoch: log.epoch.clone(),
                duplicate: true,
            });
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
        if let Some(permit) = permit.filter(|_| log.subscribed) {
            permit.send(BrokerEvent::Publication {
                room: req.room,
                seq,
                epoch: log.epoch.clone(),
                frame,
            });
        }
        Ok(Published {
            seq,
            epoch: log.epoch.clone(),
            duplicate: false,
        })
    }
}

impl Broker for MemoryBroker {
    fn events(&self) -> LocalBoxStream<'static, BrokerEvent> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        if self.events.borrow_mut().replace(tx).is_some() {
            self.take_over();
        }
        tokio_stream_from(rx)
    }

    fn publish(&self, request: PublishRequest) -> BrokerFuture<Published> {
        Box::pin(ready(self.publish_now(request)))
    }

    fn history(
        &self,
        room: &RoomName,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> BrokerFuture<History> {
        let mut rooms = self.rooms.borrow_mut();
        let log = rooms.entry(room.clone()).or_insert_with(RoomLog::new);
        log.expire(self.limits, Instant::now());
        Box::pin(ready(Ok(log.history(since, epoch))))
    }

    fn subscribe_room(&self, room: &RoomName) -> BrokerFuture<()> {
        let mut rooms = self.rooms.borrow_mut();
        let log = rooms.entry(room.clone()).or_insert_with(RoomLog::new);
        log.subscribed = true;
        log.released_at = None;
        Box::pin(ready(Ok(())))
    }

    fn unsubscribe_room(&self, room: &RoomName) {
        let now = Instant::now();
        let mut rooms = self.rooms.borrow_mut();
        if let Some(log) = rooms.get_mut(room) {
            log.subscribed = false;
            log.released_at = Some(now);
            if log.forgettable(self.limits, now) {
                rooms.remove(room);
            }
        }
    }

    fn subscribe_user(&self, _: &UserName) -> BrokerFuture<()> {
        Box::pin(ready(Ok(())))
    }

    fn unsubscribe_user(&self, _: &UserName) {}

    fn send_to_others(&self, _: &UserName, _: Bytes) -> BrokerFuture<usize> {
        Box::pin(ready(Ok(0)))
    }

    fn kick_others(&self, _: &UserName, _: ByeReason) -> BrokerFuture<usize> {
        Box::pin(ready(Ok(0)))
    }

    fn kick_session_others(&self, _: &str, _: ByeReason) -> BrokerFuture<()> {
        Box::pin(ready(Ok(())))
    }

    fn presence_add(&self, room: &RoomName, user: &UserName, member: &str) -> BrokerFuture<()> {
        self.forget_presence(room, user, member);
        let mut presence = self.presence.borrow_mut();
        let members = presence
            .entry(room.clone())
            .or_default()
            .entry(user.clone())
            .or_default();
        let first = members.is_empty();
        members.insert(member.to_owned());
        drop(presence);
        if first {
            self.emit(BrokerEvent::Joined {
                room: room.clone(),
                user: user.clone(),
            });
        }
        Box::pin(ready(Ok(())))
    }

    fn presence_remove(&self, room: &RoomName, user: &UserName, member: &str) -> BrokerFuture<()> {
        self.forget_presence(room, user, member);
        let mut presence = self.presence.borrow_mut();
        let Some(users) = presence.get_mut(room) else {
            return Box::pin(ready(Ok(())));
        };
        let last = users
            .get_mut(user)
            .is_some_and(|members| members.remove(member) && members.is_empty());
        if last {
            users.remove(user);
            if users.is_empty() {
                presence.remove(room);
            }
            drop(presence);
            self.emit(BrokerEvent::Left {
                room: room.clone(),
                user: user.clone(),
            });
        }
        Box::pin(ready(Ok(())))
    }

    fn presence(&self, room: &RoomName) -> BrokerFuture<Vec<UserName>> {
        let mut users: Vec<UserName> = self
            .presence
            .borrow()
            .get(room)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default();
        users.sort_unstable();
        Box::pin(ready(Ok(users)))
    }

    fn claim_session(&self, user: &UserName, member: &str, max: usize) -> BrokerFuture<bool> {
        let mut sessions = self.sessions.borrow_mut();
        let mine = sessions.entry(user.clone()).or_default();
        let claimed = max == 0 || mine.len() < max || mine.contains(member);
        if claimed {
            mine.insert(member.into());
            drop(sessions);
            self.forget_claim(user, member);
        }
        Box::pin(ready(Ok(claimed)))
    }

    fn release_session(&self, user: &UserName, member: &str) {
        self.forget_claim(user, member);
        let mut sessions = self.sessions.borrow_mut();
        if let Some(mine) = sessions.get_mut(user) {
            mine.remove(member);
            if mine.is_empty() {
                sessions.remove(user);
            }
        }
    }

    fn release_not_rejoined(&self) {
        let NotRejoined { claims, presence } = std::mem::take(&mut *self.not_rejoined.borrow_mut());
        if claims.is_empty() && presence.is_empty() {
            return;
        }
        tracing::info!(
            claims = claims.len(),
            presence = presence.len(),
            "releasing what sessions of the crashed registry did not assert again"
        );
        for (user, member) in &claims {
            self.release_session(user, member);
        }
        for (room, user, member) in &presence {
            drop(self.presence_remove(room, user, member));
        }
    }

    fn room_stream(&self, room: &RoomName) -> BrokerFuture<Option<RoomStream>> {
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

/// A receiver as a stream.
fn tokio_stream_from(mut rx: mpsc::Receiver<BrokerEvent>) -> LocalBoxStream<'static, BrokerEvent> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed_local()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn req(room: &str, from: &str, id: Option<&str>, data: &str) -> PublishRequest {
        PublishRequest {
            room: RoomName::checked(room),
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

    fn room(name: &str) -> RoomName {
        RoomName::checked(name)
    }

    fn history(b: &MemoryBroker, r: &str, since: Option<u64>, epoch: Option<&str>) -> History {
        let rooms = b.rooms.borrow();
        rooms.get(r).unwrap().history(since, epoch)
    }

    #[test]
    fn rooms_nobody_subscribes_to_are_forgotten_with_their_history() {
        let b = MemoryBroker::new(HistoryLimits {
            size: 10,
            ttl: Duration::ZERO,
        });
        b.publish_now(req("lonely", "a", None, "1")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        b.maintain();
        assert!(b.rooms.borrow().is_empty());
    }

    #[test]
    fn sequences_gaplessly_and_dedupes_per_user() {
        let b = broker(10);
        let seq = |p: Result<Published, BrokerError>| p.unwrap();
        assert_eq!(seq(b.publish_now(req("r", "a", Some("1"), "1"))).seq, 1);
        assert_eq!(seq(b.publish_now(req("r", "a", None, "2"))).seq, 2);
        let dup = seq(b.publish_now(req("r", "a", Some("1"), "1")));
        assert!(dup.duplicate);
        assert_eq!(dup.seq, 1);
        // the same id from another user is another message
        assert_eq!(seq(b.publish_now(req("r", "b", Some("1"), "3"))).seq, 3);
        assert_eq!(seq(b.publish_now(req("other", "a", Some("1"), "1"))).seq, 1);
    }

    #[test]
    fn history_reports_completeness_and_epoch_changes() {
        let b = broker(3);
        for i in 0..5 {
            b.publish_now(req("r", "a", None, &i.to_string())).unwrap();
        }
        let full = history(&b, "r", None, None);
        assert_eq!((full.top, full.entries.len()), (5, 0));
        let recent = history(&b, "r", Some(3), Some(&full.epoch));
        assert_eq!((recent.entries.len(), recent.complete), (2, true));
        assert_eq!(recent.entries[0].0, 4);
        let old = history(&b, "r", Some(0), None);
        assert_eq!((old.entries.len(), old.complete), (3, false));
        let other_epoch = history(&b, "r", Some(3), Some("nope"));
        assert_eq!(
            (other_epoch.entries.len(), other_epoch.complete),
            (0, false)
        );
        let current = history(&b, "r", Some(5), None);
        assert_eq!((current.entries.len(), current.complete), (0, true));
    }

    #[test]
    fn released_rooms_keep_their_stream_for_the_ttl_then_restart() {
        let b = broker(0);
        b.publish_now(req("r", "a", None, "1")).unwrap();
        let before = history(&b, "r", None, None);
        b.unsubscribe_room(&room("r"));
        b.maintain();
        let kept = history(&b, "r", Some(1), Some(&before.epoch));
        assert_eq!(
            (kept.top, kept.complete),
            (1, true),
            "a quiet room resumes without a gap"
        );
        let quick = MemoryBroker::new(HistoryLimits {
            size: 0,
            ttl: Duration::ZERO,
        });
        quick.publish_now(req("r", "a", None, "1")).unwrap();
        let before = history(&quick, "r", None, None);
        quick.unsubscribe_room(&room("r"));
        drop(quick.history(&room("r"), None, None));
        let after = history(&quick, "r", None, None);
        assert_eq!(after.top, 0);
        assert_ne!(before.epoch, after.epoch);
    }

    #[test]
    fn presence_events_follow_users_not_sessions() {
        let b = broker(1);
        let mut events = b.events();
        let r = room("r");
        let alice = UserName::checked("alice");
        drop(b.presence_add(&r, &alice, "s1"));
        drop(b.presence_add(&r, &alice, "s2"));
        drop(b.presence_remove(&r, &alice, "s1"));
        drop(b.presence_remove(&r, &alice, "s2"));
        let got: Vec<String> = std::iter::from_fn(|| {
            futures_util::FutureExt::now_or_never(events.next())
                .flatten()
                .map(|e| format!("{e:?}"))
        })
        .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("Joined") && got[1].starts_with("Left"),
            "{got:?}"
        );
    }
}
