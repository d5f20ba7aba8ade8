//! Subscriptions and their position in each room's stream: the state that makes resume work.
//!
//! For every room the client remembers the last `seq` it delivered and the `epoch` that seq
//! belongs to. After a reconnect it resubscribes with `since`/`epoch`; the server replays what
//! was missed and answers `subscribed{recovered}`. This module turns that into the guarantees
//! the application sees:
//!
//! - a message whose seq is not above the last delivered one is a duplicate (a replay that
//!   overlaps what was already delivered) and is dropped, so each message arrives once;
//! - a message that skips seqs, or a `subscribed` with `recovered:false` or another epoch,
//!   produces a [`Gap`] *before* anything after the hole is delivered: never a silent loss.
//!
//! It is plain data with no I/O, so the rules are unit-tested directly.

use std::collections::BTreeMap;

use super::event::{ClientEvent, Gap};
use super::frames::{Message, Subscribed};

/// Where the client is in one room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomPosition {
    /// The last seq delivered to the application (or announced by `subscribed`).
    pub last_seq: Option<u64>,
    /// The epoch `last_seq` belongs to.
    pub epoch: Option<String>,
    /// A gap was already reported during the current (re)subscription.
    gap_reported: bool,
    /// A `subscribe` was sent on this connection and `subscribed` has not come back yet.
    pending: bool,
}

/// The rooms the application wants to be in, with their positions.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: BTreeMap<String, RoomPosition>,
}

/// What to do with an incoming room message.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// Not subscribed (any more), or already delivered: drop it.
    Drop,
    /// Deliver these events in order (a gap, then the message; or just the message).
    Deliver(Vec<ClientEvent>),
}

impl Rooms {
    /// Adds a room; returns `false` if it was already there.
    pub fn add(&mut self, room: &str) -> bool {
        if self.rooms.contains_key(room) {
            return false;
        }
        self.rooms.insert(room.to_owned(), RoomPosition::default());
        true
    }

    /// Removes a room; returns `false` if it was not there.
    pub fn remove(&mut self, room: &str) -> bool {
        self.rooms.remove(room).is_some()
    }

    /// Subscribed rooms, in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// A room's position.
    pub fn position(&self, room: &str) -> Option<&RoomPosition> {
        self.rooms.get(room)
    }

    /// The `(room, since, epoch)` to send in a `subscribe` for `room`, marking it pending.
    pub fn subscribe_args(&mut self, room: &str) -> Option<(Option<u64>, Option<String>)> {
        let pos = self.rooms.get_mut(room)?;
        pos.pending = true;
        pos.gap_reported = false;
        Some((pos.last_seq, pos.epoch.clone()))
    }

    /// The connection ended: nothing is pending any more.
    pub fn connection_lost(&mut self) {
        for pos in self.rooms.values_mut() {
            pos.pending = false;
        }
    }

    /// Handles a room `message`.
    pub fn on_message(&mut self, message: Message) -> Delivery {
        let (Some(room), Some(seq)) = (message.room.as_deref(), message.seq) else {
            return Delivery::Deliver(vec![ClientEvent::Message(message)]);
        };
        let Some(pos) = self.rooms.get_mut(room) else {
            return Delivery::Drop;
        };
        let mut events = Vec::with_capacity(1);
        match pos.last_seq {
            Some(last) if seq <= last => return Delivery::Drop,
            Some(last) if seq > last + 1 && !pos.gap_reported => {
                let epoch = pos.epoch.clone().unwrap_or_default();
                events.push(ClientEvent::Gap(Gap {
                    room: room.to_owned(),
                    last_seen: last,
                    previous_epoch: epoch.clone(),
                    epoch,
                    resume_seq: seq,
                }));
                // Only one report per (re)subscription; a live hole is reported each time.
                pos.gap_reported = pos.pending;
            }
            _ => {}
        }
        pos.last_seq = Some(seq);
        events.push(ClientEvent::Message(message));
        Delivery::Deliver(events)
    }

    /// Handles `subscribed`; returns the events to deliver (a gap first, when there is one).
    pub fn on_subscribed(&mut self, s: Subscribed) -> Vec<ClientEvent> {
        let Some(pos) = self.rooms.get_mut(&s.room) else {
            return Vec::new();
        };
        pos.pending = false;
        let mut events = Vec::with_capacity(2);
        let epoch_changed = pos.epoch.as_deref().is_some_and(|e| e != s.epoch);
        match pos.last_seq {
            Some(last) if epoch_changed => {
                if !pos.gap_reported {
                    events.push(ClientEvent::Gap(Gap {
                        room: s.room.clone(),
                        last_seen: last,
                        previous_epoch: pos.epoch.clone().unwrap_or_default(),
                        epoch: s.epoch.clone(),
                        resume_seq: s.seq.saturating_add(1),
                    }));
                }
                pos.last_seq = Some(s.seq);
            }
            Some(last) => {
                if s.recovered == Some(false) && !pos.gap_reported && s.seq > last {
                    events.push(ClientEvent::Gap(Gap {
                        room: s.room.clone(),
                        last_seen: last,
                        previous_epoch: s.epoch.clone(),
                        epoch: s.epoch.clone(),
                        resume_seq: s.seq.saturating_add(1),
                    }));
                }
                pos.last_seq = Some(last.max(s.seq));
            }
            None => pos.last_seq = Some(s.seq),
        }
        pos.epoch = Some(s.epoch.clone());
        pos.gap_reported = false;
        events.push(ClientEvent::Subscribed {
            room: s.room,
            seq: s.seq,
            epoch: s.epoch,
            recovered: s.recovered,
        });
        events
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn msg(room: &str, seq: u64) -> Message {
        Message {
            room: Some(room.into()),
            seq: Some(seq),
            from: Some("u".into()),
            data: RawValue::from_string(seq.to_string()).unwrap(),
            id: None,
        }
    }

    fn subscribed(room: &str, seq: u64, epoch: &str, recovered: Option<bool>) -> Subscribed {
        Subscribed {
            room: room.into(),
            seq,
            epoch: epoch.into(),
            recovered,
        }
    }

    fn seqs(events: &[ClientEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ClientEvent::Message(m) => format!("m{}", m.seq.unwrap_or(0)),
                ClientEvent::Gap(g) => format!("gap{}-{}", g.last_seen, g.resume_seq),
                ClientEvent::Subscribed { recovered, .. } => format!("sub{recovered:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn feed(rooms: &mut Rooms, m: Message) -> Vec<ClientEvent> {
        match rooms.on_message(m) {
            Delivery::Drop => Vec::new(),
            Delivery::Deliver(events) => events,
        }
    }

    #[test]
    fn overlapping_replay_is_delivered_once_in_order() {
        let mut rooms = Rooms::default();
        rooms.add("r");
        rooms.subscribe_args("r");
        rooms.on_subscribed(subscribed("r", 0, "e1", None));
        let mut out = Vec::new();
        for seq in 1..=3 {
            out.extend(feed(&mut rooms, msg("r", seq)));
        }
        // reconnect: since=3; the server replays 2..=5 (an overlap must not duplicate)
        assert_eq!(
            rooms.subscribe_args("r"),
            Some((Some(3), Some("e1".into())))
        );
        for seq in 2..=5 {
            out.extend(feed(&mut rooms, msg("r", seq)));
        }
        out.extend(rooms.on_subscribed(subscribed("r", 5, "e1", Some(true))));
        assert_eq!(seqs(&out), ["m1", "m2", "m3", "m4", "m5", "subSome(true)"]);
    }

    #[test]
    fn partial_replay_reports_the_gap_before_the_first_message_after_it() {
        let mut rooms = Rooms::default();
        rooms.add("r");
        rooms.subscribe_args("r");
        rooms.on_subscribed(subscribed("r", 2, "e1", None));
        rooms.subscribe_args("r");
        let mut out = feed(&mut rooms, msg("r", 6));
        out.extend(feed(&mut rooms, msg("r", 7)));
        out.extend(rooms.on_subscribed(subscribed("r", 7, "e1", Some(false))));
        assert_eq!(seqs(&out), ["gap2-6", "m6", "m7", "subSome(false)"]);
    }

    #[test]
    fn lost_history_and_new_epoch_are_gaps() {
        let mut rooms = Rooms::default();
        rooms.add("r");
        rooms.subscribe_args("r");
        rooms.on_subscribed(subscribed("r", 4, "e1", None));
        rooms.subscribe_args("r");
        let out = rooms.on_subscribed(subscribed("r", 9, "e1", Some(false)));
        assert_eq!(seqs(&out), ["gap4-10", "subSome(false)"]);

        rooms.subscribe_args("r");
        let out = rooms.on_subscribed(subscribed("r", 1, "e2", Some(false)));
        match &out[0] {
            ClientEvent::Gap(g) => {
                assert!(g.epoch_changed());
                assert_eq!((g.last_seen, g.resume_seq), (9, 2));
            }
            other => panic!("{other:?}"),
        }
        // the new epoch's numbering is followed from there
        assert_eq!(seqs(&feed(&mut rooms, msg("r", 2))), ["m2"]);
        assert_eq!(rooms.position("r").unwrap().epoch.as_deref(), Some("e2"));
    }

    #[test]
    fn messages_for_unknown_rooms_are_dropped_and_direct_ones_pass() {
        let mut rooms = Rooms::default();
        assert_eq!(rooms.on_message(msg("x", 1)), Delivery::Drop);
        let direct = Message {
            room: None,
            seq: None,
            ..msg("x", 1)
        };
        assert!(matches!(rooms.on_message(direct), Delivery::Deliver(ref e) if e.len() == 1));
    }
}
