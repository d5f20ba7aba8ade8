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
//!   produces a [`Gap`] *before* anything after the hole is delivered: never a silent loss;
//! - when the answer names another epoch (the server lost its history, typically in a
//!   restart), what the old epoch held is gone, but the new epoch may already hold messages
//!   the client never saw (published by clients that came back first). The client fetches
//!   them: protocol v1 replays a room's whole retained history to `subscribe{since: 0,
//!   epoch}`, so the client sends exactly that, on the same connection.
//!
//! The fetch is a second `subscribe` to a room the session is already in, so the server keeps
//! delivering live messages meanwhile: the answer is live messages, then the replay (which
//! repeats the live ones it still holds), then `subscribed`. Delivering the live ones as they
//! come would put them before older seqs, so everything of the room is held back until the
//! fetch's `subscribed`, then released in seq order, once each. A replay that no longer starts
//! at seq 1 (the new epoch outgrew `history_size`) is a second [`Gap`], in the new epoch. The
//! same-epoch case needs no fetch: the resubscribe's own replay already carries everything
//! the server holds after `since`.
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
    /// The retained history of a new epoch is being fetched.
    fetch: Option<Fetch>,
}

impl RoomPosition {
    /// Whether the retained history of a new epoch is being fetched (the room's messages are
    /// held back until it is in).
    #[cfg(test)]
    pub fn fetching(&self) -> bool {
        self.fetch.is_some()
    }

    /// A hole in the current epoch: `last + 1 .. resume_seq` are missing.
    fn gap(&self, room: &str, last: u64, resume_seq: u64) -> ClientEvent {
        let epoch = self.epoch.clone().unwrap_or_default();
        ClientEvent::Gap(Gap {
            room: room.to_owned(),
            last_seen: last,
            previous_epoch: epoch.clone(),
            epoch,
            resume_seq,
        })
    }

    /// Delivers held messages in seq order, once each, reporting every hole before what
    /// follows it.
    fn release(&mut self, room: &str, held: BTreeMap<u64, Message>, events: &mut Vec<ClientEvent>) {
        for (seq, message) in held {
            let last = self.last_seq.unwrap_or(0);
            if seq <= last {
                continue;
            }
            if seq > last + 1 {
                events.push(self.gap(room, last, seq));
            }
            self.last_seq = Some(seq);
            events.push(ClientEvent::Message(message));
        }
    }
}

/// A fetch of what a room's new epoch retains: its number, and the room's messages held back
/// until it is answered (keyed by seq, which merges the replay with live messages).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fetch {
    id: u64,
    held: BTreeMap<u64, Message>,
}

/// The rooms the application wants to be in, with their positions.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: BTreeMap<String, RoomPosition>,
    /// Number of the last fetch started.
    fetches: u64,
}

/// What to do with an incoming room message.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// Not subscribed (any more), or already delivered: drop it.
    Drop,
    /// Kept until the room's fetch is answered, then delivered in seq order.
    Held,
    /// Deliver these events in order (a gap, then the message; or just the message).
    Deliver(Vec<ClientEvent>),
}

/// What a `subscribed` leads to.
#[derive(Debug, Default, PartialEq)]
pub struct Answered {
    /// Events to deliver, in order.
    pub events: Vec<ClientEvent>,
    /// The room's stream restarted and its new epoch holds messages: send `subscribe` again
    /// (its [`Rooms::subscribe_args`] are now `since: 0` and the new epoch) to fetch them.
    /// The number identifies this fetch for [`Rooms::fetch_timed_out`].
    pub fetch: Option<u64>,
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

    /// Rooms whose `subscribe` was sent on this connection and not answered yet.
    pub fn pending(&self) -> Vec<String> {
        self.rooms
            .iter()
            .filter(|(_, pos)| pos.pending)
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// The connection ended: nothing is pending any more. A fetch in progress is dropped with
    /// what it held; the resubscription (`since: 0` in the new epoch) asks for all of it again.
    pub fn connection_lost(&mut self) {
        for pos in self.rooms.values_mut() {
            pos.pending = false;
            pos.fetch = None;
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
        if pos.last_seq.is_some_and(|last| seq <= last) {
            return Delivery::Drop;
        }
        if let Some(fetch) = &mut pos.fetch {
            // A live message overtaking the fetch's replay, or the replay itself.
            fetch.held.entry(seq).or_insert(message);
            return Delivery::Held;
        }
        let mut events = Vec::with_capacity(1);
        match pos.last_seq {
            Some(last) if seq > last + 1 && !pos.gap_reported => {
                events.push(pos.gap(room, last, seq));
                // Only one report per (re)subscription; a live hole is reported each time.
                pos.gap_reported = pos.pending;
            }
            _ => {}
        }
        pos.last_seq = Some(seq);
        events.push(ClientEvent::Message(message));
        Delivery::Deliver(events)
    }

    /// Handles `subscribed`: the events to deliver (a gap first, when there is one), and
    /// whether to fetch the room's new epoch.
    pub fn on_subscribed(&mut self, s: Subscribed) -> Answered {
        let Some(pos) = self.rooms.get_mut(&s.room) else {
            return Answered::default();
        };
        pos.pending = false;
        let mut events = Vec::with_capacity(2);
        let epoch_changed = pos.epoch.as_deref().is_some_and(|e| e != s.epoch);
        if let Some(fetch) = pos.fetch.take() {
            if !epoch_changed {
                // The fetch is answered: everything up to `s.seq` that the epoch retains was
                // replayed before this frame. What it no longer holds is a gap.
                pos.release(&s.room, fetch.held, &mut events);
                let last = pos.last_seq.unwrap_or(0);
                if s.seq > last {
                    events.push(pos.gap(&s.room, last, s.seq.saturating_add(1)));
                    pos.last_seq = Some(s.seq);
                }
                pos.gap_reported = false;
                events.push(ClientEvent::Subscribed {
                    room: s.room,
                    // Live messages held past the replay were delivered before it.
                    seq: pos.last_seq.map_or(s.seq, |last| last.max(s.seq)),
                    epoch: s.epoch,
                    // The resubscription that started the fetch lost the old epoch.
                    recovered: Some(false),
                });
                return Answered {
                    events,
                    fetch: None,
                };
            }
            // The stream restarted again before the fetch was answered: what was held belongs
            // to the abandoned epoch, and the gap reported below covers it.
        }
        match pos.last_seq {
            Some(last) if epoch_changed => {
                if !pos.gap_reported {
                    events.push(ClientEvent::Gap(Gap {
                        room: s.room.clone(),
                        last_seen: last,
                        previous_epoch: pos.epoch.clone().unwrap_or_default(),
                        epoch: s.epoch.clone(),
                        resume_seq: 1,
                    }));
                }
                pos.epoch = Some(s.epoch.clone());
                pos.last_seq = Some(0);
                pos.gap_reported = false;
                if s.seq > 0 {
                    // `subscribed` is reported when the fetch is answered, after its messages.
                    self.fetches += 1;
                    pos.fetch = Some(Fetch {
                        id: self.fetches,
                        held: BTreeMap::new(),
                    });
                    return Answered {
                        events,
                        fetch: Some(self.fetches),
                    };
                }
            }
            Some(last) => {
                if s.recovered == Some(false) && !pos.gap_reported && s.seq > last {
                    events.push(pos.gap(&s.room, last, s.seq.saturating_add(1)));
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
        Answered {
            events,
            fetch: None,
        }
    }

    /// Whether fetch number `fetch` of `room` still waits for its answer.
    pub fn fetch_pending(&self, room: &str, fetch: u64) -> bool {
        self.rooms
            .get(room)
            .and_then(|pos| pos.fetch.as_ref())
            .is_some_and(|f| f.id == fetch)
    }

    /// Fetch number `fetch` of `room` got no answer in time (the server may have dropped the
    /// `subscribe`, e.g. as rate-limited): stop holding the room back. Returns the held
    /// messages in seq order, each hole reported before what follows it; what a late answer
    /// still brings is delivered if it is newer, dropped if not.
    pub fn fetch_timed_out(&mut self, room: &str, fetch: u64) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        let Some(pos) = self.rooms.get_mut(room) else {
            return events;
        };
        if pos.fetch.as_ref().is_none_or(|f| f.id != fetch) {
            return events;
        }
        // No longer waiting for that answer: later holes are reported as they come.
        pos.pending = false;
        if let Some(fetch) = pos.fetch.take() {
            pos.release(room, fetch.held, &mut events);
        }
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
            Delivery::Drop | Delivery::Held => Vec::new(),
            Delivery::Deliver(events) => events,
        }
    }

    /// Subscribes `r` in `epoch` and delivers up to `last`.
    fn at(epoch: &str, last: u64) -> Rooms {
        let mut rooms = Rooms::default();
        rooms.add("r");
        rooms.subscribe_args("r");
        rooms.on_subscribed(subscribed("r", last, epoch, None));
        rooms
    }

    /// Resubscribes `r` and gets an answer in another epoch: returns the events and the fetch.
    fn restarted(rooms: &mut Rooms, seq: u64, epoch: &str) -> (Vec<ClientEvent>, Option<u64>) {
        rooms.subscribe_args("r");
        let answered = rooms.on_subscribed(subscribed("r", seq, epoch, Some(false)));
        (answered.events, answered.fetch)
    }

    #[test]
    fn overlapping_replay_is_delivered_once_in_order() {
        let mut rooms = at("e1", 0);
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
        out.extend(
            rooms
                .on_subscribed(subscribed("r", 5, "e1", Some(true)))
                .events,
        );
        assert_eq!(seqs(&out), ["m1", "m2", "m3", "m4", "m5", "subSome(true)"]);
    }

    #[test]
    fn partial_replay_reports_the_gap_before_the_first_message_after_it() {
        let mut rooms = at("e1", 2);
        rooms.subscribe_args("r");
        let mut out = feed(&mut rooms, msg("r", 6));
        out.extend(feed(&mut rooms, msg("r", 7)));
        let answered = rooms.on_subscribed(subscribed("r", 7, "e1", Some(false)));
        // the replay already held everything retained: nothing to fetch
        assert_eq!(answered.fetch, None);
        out.extend(answered.events);
        assert_eq!(seqs(&out), ["gap2-6", "m6", "m7", "subSome(false)"]);
    }

    #[test]
    fn lost_history_and_new_epoch_are_gaps() {
        let mut rooms = at("e1", 4);
        rooms.subscribe_args("r");
        let answered = rooms.on_subscribed(subscribed("r", 9, "e1", Some(false)));
        assert_eq!(seqs(&answered.events), ["gap4-10", "subSome(false)"]);

        let (out, fetch) = restarted(&mut rooms, 1, "e2");
        match &out[..] {
            [ClientEvent::Gap(g)] => {
                assert!(g.epoch_changed());
                assert_eq!((g.last_seen, g.resume_seq), (9, 1));
                assert_eq!((g.previous_epoch.as_str(), g.epoch.as_str()), ("e1", "e2"));
            }
            other => panic!("{other:?}"),
        }
        // the new epoch's seq 1 is fetched: `subscribe{since: 0, epoch: e2}`
        let fetch = fetch.expect("a fetch");
        assert_eq!(
            rooms.subscribe_args("r"),
            Some((Some(0), Some("e2".into())))
        );
        assert!(rooms.fetch_pending("r", fetch));
        assert_eq!(rooms.on_message(msg("r", 1)), Delivery::Held);
        let answered = rooms.on_subscribed(subscribed("r", 1, "e2", Some(true)));
        assert_eq!(seqs(&answered.events), ["m1", "subSome(false)"]);
        assert!(!rooms.fetch_pending("r", fetch));
        // then the new epoch's numbering is followed
        assert_eq!(seqs(&feed(&mut rooms, msg("r", 2))), ["m2"]);
        assert_eq!(rooms.position("r").unwrap().epoch.as_deref(), Some("e2"));
    }

    #[test]
    fn live_messages_overtaking_the_fetch_come_after_it_once_each() {
        let mut rooms = at("e1", 4);
        let (mut out, fetch) = restarted(&mut rooms, 2, "e2");
        assert!(fetch.is_some());
        rooms.subscribe_args("r");
        // live 3 and 4 arrive before the server handles the fetch; its replay repeats them
        for seq in [3, 4, 1, 2, 3, 4] {
            assert_eq!(rooms.on_message(msg("r", seq)), Delivery::Held);
        }
        out.extend(
            rooms
                .on_subscribed(subscribed("r", 4, "e2", Some(true)))
                .events,
        );
        out.extend(feed(&mut rooms, msg("r", 4)));
        out.extend(feed(&mut rooms, msg("r", 5)));
        assert_eq!(
            seqs(&out),
            ["gap4-1", "m1", "m2", "m3", "m4", "subSome(false)", "m5"]
        );
    }

    #[test]
    fn subscribed_after_a_fetch_says_where_the_delivered_stream_stands() {
        let mut rooms = at("e1", 4);
        let (_, fetch) = restarted(&mut rooms, 2, "e2");
        assert!(fetch.is_some());
        rooms.subscribe_args("r");
        // live 4 overtakes the fetch, whose replay ends at 3 with `subscribed{seq: 3}`
        for seq in [4, 1, 2, 3] {
            assert_eq!(rooms.on_message(msg("r", seq)), Delivery::Held);
        }
        let events = rooms
            .on_subscribed(subscribed("r", 3, "e2", Some(true)))
            .events;
        assert_eq!(seqs(&events), ["m1", "m2", "m3", "m4", "subSome(false)"]);
        match events.last() {
            Some(ClientEvent::Subscribed { seq, .. }) => assert_eq!(*seq, 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_epoch_past_its_history_size_is_a_second_gap_in_that_epoch() {
        let mut rooms = at("e1", 7);
        let (mut out, _) = restarted(&mut rooms, 5, "e2");
        rooms.subscribe_args("r");
        // history_size 3: live 6, then the replay 4..=6
        for seq in [6, 4, 5, 6] {
            assert_eq!(rooms.on_message(msg("r", seq)), Delivery::Held);
        }
        out.extend(
            rooms
                .on_subscribed(subscribed("r", 6, "e2", Some(false)))
                .events,
        );
        assert_eq!(
            seqs(&out),
            ["gap7-1", "gap0-4", "m4", "m5", "m6", "subSome(false)"]
        );
        match &out[1] {
            ClientEvent::Gap(g) => {
                assert!(!g.epoch_changed());
                assert_eq!(g.epoch, "e2");
                assert_eq!(g.to_string(), "room r: missed seq 1..3");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_epoch_that_retains_nothing_is_a_gap_up_to_its_seq() {
        let mut rooms = at("e1", 2);
        let (mut out, _) = restarted(&mut rooms, 5, "e2");
        rooms.subscribe_args("r");
        out.extend(
            rooms
                .on_subscribed(subscribed("r", 5, "e2", Some(false)))
                .events,
        );
        out.extend(feed(&mut rooms, msg("r", 6)));
        assert_eq!(seqs(&out), ["gap2-1", "gap0-6", "subSome(false)", "m6"]);
    }

    #[test]
    fn an_empty_new_epoch_needs_no_fetch() {
        let mut rooms = at("e1", 3);
        let (mut out, fetch) = restarted(&mut rooms, 0, "e2");
        assert_eq!(fetch, None);
        out.extend(feed(&mut rooms, msg("r", 1)));
        assert_eq!(seqs(&out), ["gap3-1", "subSome(false)", "m1"]);
    }

    #[test]
    fn a_first_subscription_fetches_nothing() {
        let mut rooms = Rooms::default();
        rooms.add("r");
        rooms.subscribe_args("r");
        let answered = rooms.on_subscribed(subscribed("r", 9, "e1", None));
        assert_eq!(answered.fetch, None);
        assert_eq!(seqs(&answered.events), ["subNone"]);
    }

    #[test]
    fn a_fetch_cut_by_the_connection_is_asked_again_from_zero() {
        let mut rooms = at("e1", 3);
        restarted(&mut rooms, 2, "e2");
        rooms.subscribe_args("r");
        assert_eq!(rooms.on_message(msg("r", 1)), Delivery::Held);
        rooms.connection_lost();
        assert!(!rooms.position("r").unwrap().fetching());
        assert_eq!(
            rooms.subscribe_args("r"),
            Some((Some(0), Some("e2".into())))
        );
        let mut out = feed(&mut rooms, msg("r", 1));
        out.extend(feed(&mut rooms, msg("r", 2)));
        out.extend(
            rooms
                .on_subscribed(subscribed("r", 2, "e2", Some(true)))
                .events,
        );
        assert_eq!(seqs(&out), ["m1", "m2", "subSome(true)"]);
    }

    #[test]
    fn a_fetch_answered_in_yet_another_epoch_starts_over() {
        let mut rooms = at("e1", 3);
        let (_, first) = restarted(&mut rooms, 2, "e2");
        rooms.subscribe_args("r");
        assert_eq!(rooms.on_message(msg("r", 3)), Delivery::Held);
        let answered = rooms.on_subscribed(subscribed("r", 1, "e3", Some(false)));
        match &answered.events[..] {
            [ClientEvent::Gap(g)] => {
                assert_eq!((g.previous_epoch.as_str(), g.epoch.as_str()), ("e2", "e3"));
                assert_eq!((g.last_seen, g.resume_seq), (0, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(answered.fetch.is_some() && answered.fetch != first);
    }

    #[test]
    fn a_fetch_without_answer_releases_what_it_holds() {
        let mut rooms = at("e1", 3);
        let (_, fetch) = restarted(&mut rooms, 2, "e2");
        let fetch = fetch.expect("a fetch");
        rooms.subscribe_args("r");
        for seq in [3, 4] {
            assert_eq!(rooms.on_message(msg("r", seq)), Delivery::Held);
        }
        assert!(
            rooms.fetch_timed_out("r", fetch + 1).is_empty(),
            "another fetch"
        );
        let out = rooms.fetch_timed_out("r", fetch);
        assert_eq!(seqs(&out), ["gap0-3", "m3", "m4"]);
        assert!(rooms.fetch_timed_out("r", fetch).is_empty(), "only once");
        // a late replay adds nothing twice
        for seq in 1..=4 {
            assert_eq!(rooms.on_message(msg("r", seq)), Delivery::Drop);
        }
        assert_eq!(seqs(&feed(&mut rooms, msg("r", 5))), ["m5"]);
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
